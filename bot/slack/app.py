"""The Slack face: an async Bolt app that reads `/finetune` text with the core's grammar, presses buttons by their
stored key, opens modals for text a button needs (a Fix's answer, an override's reason) and for the dataset to
train on, and hands every action to the core. It decides nothing about runs, reviews, approvals or permissions.

Every listener acknowledges first (Slack waits 3 s; `ack` must come before anything slow) and then hands the work
to a task. A delivery seen before by any bot sharing Redis (an Events API retry, a payload redelivered with the same
action timestamp) is acknowledged and dropped."""

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core import conversations
from bot.core.actions import Action, StartRun, with_text
from bot.core.deliveries import Deliveries
from bot.core.errors import UserError
from bot.core.handoff import HandOff
from bot.core.identity import Actor
from bot.core.outbox import Outbox, Undeliverable
from bot.core.perform import Core
from bot.core.uploads import upload_folder, with_upload
from bot.slack import blocks
from bot.slack.sender import refusal

COMMAND = "/finetune"
HTML_INSTEAD = (
    "Slack sent a web page instead of {name}: the app needs the files:read scope "
    "(add it to the app, reinstall it, then upload again)."
)
TOO_BIG = "{name} is {size} bytes; tuneloop takes files up to {limit} bytes."

logger = logging.getLogger(__name__)


class SlackFace:
    def __init__(
        self,
        core: Core,
        client: AsyncWebClient,
        outbox: Outbox,
        deliveries: Deliveries,
        *,
        uploads: Path | None = None,
    ) -> None:
        self.core, self.client, self.outbox, self.deliveries = core, client, outbox, deliveries
        self.uploads = uploads or core.settings.home / "uploads" / "slack"
        self.handoff = HandOff("Slack")
        self._authorized: AuthorizeResult | None = None
        self._authorizing = asyncio.Lock()

    def app(self, *, signing_secret: str | None) -> AsyncApp:
        """The Bolt app; `signing_secret` None for Socket Mode, where Slack's own connection is the credential."""

        async def authorize() -> AuthorizeResult:  # Bolt reads a plain function's parameters, not a method's
            return await self._authorize()

        app = AsyncApp(
            client=self.client,
            authorize=authorize,
            signing_secret=signing_secret,
            request_verification_enabled=signing_secret is not None,
            process_before_response=False,
        )
        app.middleware(self._drop_repeats)
        app.command(COMMAND)(self._command)
        app.action(re.compile(rf"^({blocks.ASK}|{blocks.DO}):"))(self._pressed)
        app.view(blocks.TEXT_MODAL)(self._text_given)
        app.view(blocks.UPLOAD_MODAL)(self._upload_given)
        return app

    async def _authorize(self) -> AuthorizeResult:
        """Who the bot is, asked of Slack once (auth.test): Bolt's own check caches only its first answer, so two
        hundred commands arriving together made over a hundred calls, and waited for them, before acknowledging."""
        async with self._authorizing:
            if self._authorized is None:
                answer = await self.client.auth_test()
                self._authorized = AuthorizeResult.from_auth_test_response(
                    bot_token=self.client.token, auth_test_response=answer
                )
        return self._authorized

    async def idle(self) -> None:
        """Wait for the work handed off so far (tests, and a clean stop)."""
        await self.handoff.idle()
        await self.outbox.drain()

    # --- listeners --------------------------------------------------------------------------------------------

    async def _drop_repeats(self, body: dict, next: Any) -> Any:
        """An event seen before (Slack retries what was not answered in time), or a button payload with an
        action timestamp seen before, is acknowledged and dropped."""
        key = body.get("event_id")
        if body.get("type") == "block_actions" and body.get("actions"):
            key = f"{body['user']['id']}:{body['actions'][0].get('action_ts')}"
        if key is not None and not await self.deliveries.first_time(key):
            return BoltResponse(status=200, body="")
        return await next()

    async def _command(self, ack: AsyncAck, command: dict, respond: Any) -> None:
        # Acknowledged before anything else: reading the text asks the database, which may be busy.
        await ack()
        actor = _actor(command["user_id"], command.get("user_name"), command["channel_id"])
        text = command.get("text", "").strip() or "help"
        # Not in turn: a modal must open within 3 s of the command; only carrying the action out waits its turn.
        self.handoff.start(self._command_text(text, actor, command, respond), in_turn=False)

    async def _pressed(self, ack: AsyncAck, body: dict, action: dict) -> None:
        await ack()
        actor = _actor(body["user"]["id"], body["user"].get("username"), body["channel"]["id"])
        message = body.get("message") or {}
        where = {
            "key": action["value"],
            "channel": body["channel"]["id"],
            "thread": message.get("thread_ts") or message.get("ts") or "",
            "ts": message.get("ts", ""),
        }
        if action["action_id"].startswith(f"{blocks.ASK}:"):
            try:
                _, prompt = await asyncio.to_thread(self.core.button_for_key, action["value"])
            except UserError as error:
                await self._tell(actor, where["channel"], str(error))
                return
            label = action.get("text", {}).get("text", "tuneloop")
            # What the pressed message showed, for its buttons to be replaced once the text comes (modal metadata
            # holds 3000 characters: the title alone when the rest does not fit).
            shown = [block for block in message.get("blocks") or [] if block.get("type") != "actions"]
            where["blocks"] = json.dumps(shown)
            if len(json.dumps(where)) > blocks.METADATA:
                where["blocks"] = json.dumps(shown[:1])[: blocks.METADATA // 2]
            view = blocks.text_modal(prompt or label, label, label, where)
            await self.client.views_open(trigger_id=body["trigger_id"], view=view)
            return
        self.handoff.start(self._press(where, actor, message.get("blocks") or [], None))

    async def _text_given(self, ack: AsyncAck, body: dict, view: dict) -> None:
        text = (view["state"]["values"][blocks.TEXT_BLOCK][blocks.TEXT_INPUT].get("value") or "").strip()
        if not text:
            await ack(response_action="errors", errors={blocks.TEXT_BLOCK: "Please write something first."})
            return
        await ack()
        where = json.loads(view["private_metadata"])
        actor = _actor(body["user"]["id"], body["user"].get("username"), where["channel"])
        try:
            shown = json.loads(where.pop("blocks", "[]"))
        except ValueError:
            shown = []  # the title was cut to fit: the outcome stands alone
        self.handoff.start(self._press(where, actor, shown, text))

    async def _upload_given(self, ack: AsyncAck, body: dict, view: dict) -> None:
        values = view["state"]["values"]
        files = values.get(blocks.FILE_BLOCK, {}).get(blocks.FILE_INPUT, {}).get("files") or []
        options = values.get(blocks.OPTIONS_BLOCK, {}).get(blocks.OPTIONS_INPUT, {}).get("value") or ""
        where = json.loads(view["private_metadata"])
        actor = _actor(body["user"]["id"], body["user"].get("username"), where["channel"])
        try:
            action = await asyncio.to_thread(self.core.parse, f"{where['project']} {options}".strip(), actor)
        except UserError as error:
            await ack(response_action="errors", errors={blocks.OPTIONS_BLOCK: blocks.cut(str(error), 2000)})
            return
        limit = self.core.settings.max_upload_bytes
        too_big = [f for f in files if int(f.get("size") or 0) > limit]
        if too_big:
            sentence = TOO_BIG.format(name=too_big[0].get("name"), size=too_big[0].get("size"), limit=limit)
            await ack(response_action="errors", errors={blocks.FILE_BLOCK: sentence})
            return
        await ack()
        self.handoff.start(self._start_with_file(action, files[0] if files else None, actor, where["channel"]))

    # --- the work, after acknowledging --------------------------------------------------------------------------

    async def _command_text(self, text: str, actor: Actor, command: dict, respond: Any) -> None:
        """A command's text as an action: a mistake answered to the person alone; a project named without data
        opens the upload modal (a command carries no file); anything else carried out."""
        try:
            action = await asyncio.to_thread(self.core.parse, text, actor)
        except UserError as error:
            await respond(text=blocks.escape(str(error)), response_type="ephemeral")
            return
        if isinstance(action, StartRun) and action == StartRun(project=action.project):
            metadata = {"project": action.project, "channel": command["channel_id"]}
            await self.client.views_open(
                trigger_id=command["trigger_id"], view=blocks.upload_modal(action.project, metadata)
            )
            return
        await self.handoff.in_turn(self._perform(action, actor, command["channel_id"], None, respond=respond))

    async def _perform(
        self, action: Action, actor: Actor, channel: str, thread: str | None, *, respond: Any = None
    ) -> list | None:
        """Carry out `action` and post its answers; a refusal or mistake is told to the person alone."""
        try:
            messages = await self.core.perform_async(action, actor)
            await conversations.deliver(self.core, self.outbox, messages, channel, thread)
        except (UserError, Undeliverable) as error:
            await self._tell(actor, channel, str(error), respond=respond, thread=thread)
            return None
        return messages

    async def _press(self, where: dict, actor: Actor, posted: list[dict], text: str | None) -> None:
        """Carry out a pressed button's action (with the text its modal asked for), then replace the buttons of
        the message pressed with what was done, unless it is a run's card, which the relay keeps up to date."""
        try:
            action = await asyncio.to_thread(self.core.action_for_key, where["key"])
            if text is not None:
                action = with_text(action, text)
        except UserError as error:
            await self._tell(actor, where["channel"], str(error))
            return
        messages = await self._perform(action, actor, where["channel"], where["thread"] or None)
        if not messages or not where["ts"] or blocks.is_card(posted):
            return
        try:
            await self.client.chat_update(
                channel=where["channel"],
                ts=where["ts"],
                text=blocks.escape(messages[0].title),
                blocks=blocks.with_outcome(posted, messages[0].title),
            )
        except SlackApiError as error:
            logger.warning("could not replace the buttons of %s: %s", where["ts"], refusal(error, where["channel"]))

    async def _start_with_file(self, action: Action, file: dict | None, actor: Actor, channel: str) -> None:
        """Start the run, on the uploaded file when there is one: fetched into a folder of its own, imported by the
        core as a new dataset version, then removed (the version holds the samples)."""
        if file is None:
            await self._perform(action, actor, channel, None)
            return
        with upload_folder(self.uploads) as folder:
            try:
                path = await self._download(file, folder)
                await self._perform(with_upload(action, path, file.get("name")), actor, channel, None)
            except UserError as error:
                await self._tell(actor, channel, str(error))

    async def _download(self, file: dict, folder: Path) -> Path:
        """The file a person uploaded, fetched into `folder` with the bot token and cut off past the upload limit."""
        info = (await self.client.files_info(file=file["id"]))["file"]
        name = Path(info.get("name") or file["id"]).name
        limit = self.core.settings.max_upload_bytes
        target = folder / name
        headers = {"Authorization": f"Bearer {self.client.token}"}
        url = info["url_private_download"]
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
            if answer.status != 200:
                raise UserError(f"Slack did not give {name} (HTTP {answer.status}); try uploading it again.")
            if answer.content_type == "text/html":
                raise UserError(HTML_INSTEAD.format(name=name))
            size = 0
            with target.open("wb") as out:
                async for chunk in answer.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise UserError(TOO_BIG.format(name=name, size=f"over {limit}", limit=limit))
                    out.write(chunk)
        return target

    async def _tell(
        self, actor: Actor, channel: str, sentence: str, *, respond: Any = None, thread: str | None = None
    ) -> None:
        """A sentence for one person: through the command's response_url when there is one (it works in a
        channel the bot is not in), else as an ephemeral message."""
        text = blocks.escape(sentence)
        try:
            if respond is not None:
                await respond(text=text, response_type="ephemeral")
            else:
                await self.client.chat_postEphemeral(channel=channel, user=actor.user_id, text=text, thread_ts=thread)
        except SlackApiError as error:
            logger.warning("could not tell %s %r: %s", actor.identity, sentence, refusal(error, channel))


def _actor(user_id: str, name: str | None, channel: str) -> Actor:
    """A Slack user; the channel they act from counts as one of their groups, so a project may name a channel."""
    return Actor("slack", user_id, name, groups=(channel,))
