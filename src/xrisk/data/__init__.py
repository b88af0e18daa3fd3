"""Re-exports only."""
