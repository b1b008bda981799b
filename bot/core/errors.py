"""One error type for a person's mistakes and refusals: its message is the sentence to show them."""


class UserError(Exception):
    """Something a person asked that cannot be done as asked. `str(error)` is the sentence to show, already in their
    language; `refused` marks a permission refusal, which the core audits; `public`, a mistake the people of the
    conversation should see too (what is wrong with a shared file), not only the person who made it."""

    def __init__(
        self,
        message: str,
        *,
        refused: bool = False,
        not_found: bool = False,
        public: bool = False,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.refused = refused
        self.not_found = not_found  # it names a project, run or version that does not exist
        self.public = public
        self.transient = transient  # nothing was wrong with what was asked: it could not be done now (try again)
