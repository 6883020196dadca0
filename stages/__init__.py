"""The built-in stage plugins. They import `pipeline`; the engine never imports them by name."""
