"""Only the class LibAUC's sampler checks against; no data set of ours is ever an instance."""


class ImageFolder:  # noqa: D101 - placeholder type for an isinstance check
    pass


__all__ = ["ImageFolder"]
