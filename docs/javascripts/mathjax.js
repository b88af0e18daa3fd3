// MathJax 3 configuration for pymdownx.arithmatex (generic mode): \( \) inline, \[ \] display.
// MathJax itself is loaded from a CDN by the browser (mkdocs.yml, extra_javascript); building
// the site needs no network, and without one the formulas show as their TeX source.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};

// mkdocs-material's instant navigation swaps pages without reloading: typeset again.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (window.MathJax && MathJax.typesetPromise) {
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
