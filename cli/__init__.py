"""Click entry points; they parse options and call library functions, nothing more."""
