"""The outbox's Slack side: messages as Block Kit through chat.postMessage and chat.update, a message's charts and
report uploaded into its thread with files_upload_v2 (`thread_ts` the thread's root: the upload gives back no
message ts to rely on), and Slack's refusals in words."""

import logging
from pathlib import Path

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.messages import Message
from bot.core.outbox import RateLimited, Undeliverable, attach
from bot.slack.blocks import blocks_of, fallback_text

logger = logging.getLogger(__name__)

# Refusals that no retry can change: Slack's error code -> the catalogue's words for what a person should do.
FOR_GOOD = {
    "not_in_channel": "post.not_in_channel",
    "channel_not_found": "post.channel_not_found",
    "is_archived": "post.is_archived",
    "msg_too_long": "post.too_long",
    "invalid_blocks": "post.layout",
}


def refusal(error: SlackApiError, channel: str) -> Exception:
    """A SlackApiError as the outbox's exceptions: RateLimited, Undeliverable (with its sentence), or itself."""
    response = error.response
    if response.status_code == 429:
        return RateLimited(float(response.headers.get("Retry-After", response.headers.get("retry-after", 1))))
    code = response.get("error", "")
    if code in FOR_GOOD:
        return Undeliverable(FOR_GOOD[code], channel=channel)
    return error


class SlackSender:
    platform = "slack"

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def post(self, channel: str, thread: str | None, message: Message) -> str:
        try:
            posted = await self.client.chat_postMessage(
                channel=channel, thread_ts=thread, text=fallback_text(message), blocks=blocks_of(message)
            )
        except SlackApiError as error:
            raise refusal(error, channel) from None
        for path in [*message.images, *message.files]:
            await self._upload(channel, thread or posted["ts"], path)
        return posted["ts"]

    async def update(self, channel: str, message_id: str, message: Message) -> None:
        try:
            await self.client.chat_update(
                channel=channel, ts=message_id, text=fallback_text(message), blocks=blocks_of(message)
            )
        except SlackApiError as error:
            raise refusal(error, channel) from None

    async def _upload(self, channel: str, thread: str, path: Path) -> None:
        """Upload into the thread; the message is already posted, so a failure here is logged, never retried by
        posting the message again."""
        if not path.is_file():
            logger.warning("not uploading %s: it is not there", path)
            return

        async def upload() -> None:
            try:
                await self.client.files_upload_v2(
                    channel=channel, thread_ts=thread, file=str(path), filename=path.name, title=path.name
                )
            except SlackApiError as error:
                raise refusal(error, channel) from None

        await attach(upload, f"{path.name} into {channel}")
