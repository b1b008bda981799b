"""Who is asking: a person on one platform, with the groups that platform says they belong to."""

from dataclasses import dataclass, field

PLATFORMS = ("cli", "slack", "telegram")


@dataclass(frozen=True)
class Actor:
    """A person on a platform. `user_id` is the platform's own id (Slack `U…`, a Telegram user id, or on the terminal
    the name given with `--by` or the OS user); `groups` the ids of the groups it reports for them (Slack user groups
    or channels, Telegram chats)."""

    platform: str
    user_id: str
    display_name: str | None = None
    groups: tuple[str, ...] = field(default_factory=tuple)

    @property
    def identity(self) -> str:
        """How projects list this person, and how the engine records them: `slack:U123`, `telegram:42`; on the
        terminal the plain name, as `--by` has always written it."""
        return self.user_id if self.platform == "cli" else f"{self.platform}:{self.user_id}"

    @property
    def group_identities(self) -> tuple[str, ...]:
        return tuple(group if self.platform == "cli" else f"{self.platform}:{group}" for group in self.groups)

    @property
    def name(self) -> str:
        """What to call them in a message."""
        return self.display_name or self.user_id
