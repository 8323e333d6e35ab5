"""fastconv's exception types.

Argument errors derive from both the Python exception a reader expects (ValueError / TypeError) and
RuntimeError, which is what torch raises for the same mistakes, so fastconv stays a drop-in
replacement for code that catches either.
"""


class ArgumentError(ValueError, RuntimeError):
    """A bad argument value (shape, size, padding, stride...); the message names the argument."""


class ArgumentTypeError(TypeError, RuntimeError):
    """An argument of the wrong type or dtype; the message names the argument."""
