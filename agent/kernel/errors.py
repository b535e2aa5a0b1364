"""The one exception type of the kernel layer: a kernel operation failed, and its message names
the verb and the object (the cause, a NetlinkError or OSError, is chained)."""


class KernelError(Exception):
    """A kernel operation failed; the message names the verb and the object."""
