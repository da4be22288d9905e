"""UserError: the one exception whose message is meant for the person who asked.

Every layer raises it (or a subclass: SpecError, DataError, ModelError, NotFound, InUse) for a
mistake a user can fix, with a message that names the field or the record. The UI and the API
show exactly that message; any other exception is a bug, shown as an internal error with a
reference to the logged traceback (webui.errors). A leaf module: it imports nothing of ours,
so storage and finetune, which import nothing else of ours, can use it.
"""


class UserError(ValueError):
    """A value, a file or a request that cannot be used; the message says what and where."""


class Missing(UserError, LookupError):
    """A record that does not exist (or an id that cannot be one)."""
