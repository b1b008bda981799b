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
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.core import conversations
from bot.core.actions import Action, ImportData, StartRun, with_text
from bot.core.catalogue import say
from bot.core.deliveries import Deliveries
from bot.core.errors import UserError
from bot.core.handoff import HandOff
from bot.core.identity import Actor
from bot.core.messages import Message
from bot.core.outbox import Outbox, Undeliverable
from bot.core.perform import Core
from bot.core.uploads import upload_folder, with_upload
from bot.slack import blocks
from bot.slack.sender import refusal

COMMAND = "/finetune"
EVENTS_PATH = "/slack/events"

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
            # Every listener acknowledges, hands its work to a task and returns, so Bolt answers as soon as it
            # returns; with False, Bolt would poll every 10 ms for each request's ack, which under a burst of
            # commands was most of the time to acknowledge.
            process_before_response=True,
        )
        app.middleware(self._drop_repeats)
        app.command(COMMAND)(self._command)
        app.action(re.compile(rf"^({blocks.ASK}|{blocks.DO}):"))(self._pressed)
        app.view(blocks.TEXT_MODAL)(self._text_given)
        app.view(blocks.UPLOAD_MODAL)(self._upload_given)
        app.event("message")(self._message)
        return app

    def http(self, *, signing_secret: str, path: str = EVENTS_PATH) -> web.Application:
        """The Bolt app over HTTP, slash commands acknowledged before Bolt reads them: a command is answered later
        through its response_url, so once its signature holds there is nothing to wait for, and a burst of them is
        acknowledged at the pace of checking signatures, Bolt's dispatch following in a task. Buttons, modals and
        events go through Bolt as they come (a modal's answer may carry its errors)."""
        app = self.app(signing_secret=signing_secret)
        verifier = SignatureVerifier(signing_secret)

        async def handle(request: web.Request) -> web.Response:
            body = await request.text()
            bolt_request = AsyncBoltRequest(body=body, query=request.query_string, headers=request.headers)  # type: ignore[arg-type]
            if _is_command(request, body) and verifier.is_valid_request(body, request.headers):
                self.handoff.start(self._dispatched(app, bolt_request), in_turn=False)
                return web.Response(status=200)
            return await to_aiohttp_response(await app.async_dispatch(bolt_request))

        served = web.Application()
        served.router.add_post(path, handle)
        return served

    async def _dispatched(self, app: AsyncApp, request: AsyncBoltRequest) -> None:
        response = await app.async_dispatch(request)
        if response.status != 200:
            logger.warning("Bolt answered an acknowledged command with %s: %s", response.status, response.body)

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
            # Without waiting its turn: the modal must open within 3 s of the press.
            self.handoff.start(self._ask_for_text(where, actor, action, message, body["trigger_id"]), in_turn=False)
            return
        self.handoff.start(self._press(where, actor, message.get("blocks") or [], None))

    async def _ask_for_text(self, where: dict, actor: Actor, action: dict, message: dict, trigger: str) -> None:
        """Open the modal asking for the text a pressed button needs (a Fix's answer, an override's reason)."""
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
        await self.client.views_open(trigger_id=trigger, view=view)

    async def _text_given(self, ack: AsyncAck, body: dict, view: dict) -> None:
        text = (view["state"]["values"][blocks.TEXT_BLOCK][blocks.TEXT_INPUT].get("value") or "").strip()
        where = json.loads(view["private_metadata"])
        actor = _actor(body["user"]["id"], body["user"].get("username"), where["channel"])
        if not text:
            language = await asyncio.to_thread(self.core.language_of, actor)
            await ack(response_action="errors", errors={blocks.TEXT_BLOCK: say(language, "modal.empty")})
            return
        await ack()
        try:
            shown = json.loads(where.pop("blocks", "[]"))
        except ValueError:
            shown = []  # the title was cut to fit: the outcome stands alone
        self.handoff.start(self._press(where, actor, shown, text))

    async def _message(self, ack: AsyncAck, event: dict) -> None:
        """A message in a channel the bot is in: only one sharing a file matters (its own are not delivered: Bolt
        drops them), and it is handed off; any other is just acknowledged."""
        await ack()
        files = event.get("files") or []
        if files and event.get("user") and event.get("subtype") in (None, "file_share"):
            actor = _actor(event["user"], None, event["channel"])
            self.handoff.start(self._file_shared(event, files[0], actor), in_turn=False)

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
        language = await asyncio.to_thread(self.core.language_of, actor, where["project"])
        too_big = self._too_big(files[0], language) if files else None
        if too_big:
            await ack(response_action="errors", errors={blocks.FILE_BLOCK: too_big})
            return
        await ack()
        self.handoff.start(self._with_file(action, files[0] if files else None, actor, where["channel"]), in_turn=False)

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
            language = await asyncio.to_thread(self.core.language_of, actor, action.project)
            view = blocks.upload_modal(action.project, metadata, language)
            await self.client.views_open(trigger_id=command["trigger_id"], view=view)
            return
        await self.handoff.in_turn(self._perform(action, actor, command["channel_id"], None, respond=respond))

    async def _perform(
        self, action: Action, actor: Actor, channel: str, thread: str | None, *, respond: Any = None
    ) -> list | None:
        """Carry out `action` and post its answers; a refusal or mistake is told to the person alone."""
        try:
            messages = await self.core.perform_async(action, actor)
            await conversations.deliver(self.core, self.outbox, messages, channel, thread)
        except UserError as error:
            if error.public:  # what is wrong with a shared file: for everyone in the conversation
                await self._announce(actor, Message(str(error), kind="error"), channel, thread)
            else:
                await self._tell(actor, channel, str(error), respond=respond, thread=thread)
            return None
        except Undeliverable as error:
            language = await asyncio.to_thread(self.core.language_of, actor)
            await self._tell(actor, channel, error.sentence(language), respond=respond, thread=thread)
            return None
        return messages

    async def _announce(self, actor: Actor, message: Message, channel: str, thread: str | None) -> None:
        """Post `message` where it was asked; told to the person alone when the bot cannot post there."""
        try:
            await self.outbox.post(channel, thread, message)
        except Undeliverable as error:
            language = await asyncio.to_thread(self.core.language_of, actor)
            await self._tell(actor, channel, f"{message.title}\n{error.sentence(language)}", thread=thread)

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

    async def _file_shared(self, event: dict, file: dict, actor: Actor) -> None:
        """A file shared in a run's thread is imported into the run's project, its summary answered in the thread;
        one shared in a channel with a project named (`shop epochs=2`) starts a run on it, as `/finetune shop` with
        the file would. Any other shared file is not the bot's business."""
        channel, thread = event["channel"], event.get("thread_ts")
        place = await asyncio.to_thread(conversations.find_thread, self.core.engine, "slack", channel, thread)
        if place is not None:
            action: Action = ImportData(run=place.run_id)
        else:
            try:
                action = await asyncio.to_thread(self.core.parse, event.get("text") or "", actor)
            except UserError:
                return
            if not isinstance(action, StartRun):
                return
        await self._with_file(action, file, actor, channel, thread)

    async def _with_file(
        self, action: Action, file: dict | None, actor: Actor, channel: str, thread: str | None = None
    ) -> None:
        """Carry out `action` (a run to start, data to import) on the uploaded file when there is one: fetched into
        a folder of its own, imported by the core as a new dataset version, then removed (the version holds the
        samples; a rejects file is posted before it goes)."""
        if file is None:
            await self.handoff.in_turn(self._perform(action, actor, channel, thread))
            return
        language = await asyncio.to_thread(self.core.language_of, actor, getattr(action, "project", None))
        too_big = self._too_big(file, language)
        if too_big:
            await self._tell(actor, channel, too_big, thread=thread)
            return
        with upload_folder(self.uploads) as folder:
            try:
                path = await self._download(file, folder, language)
                action = with_upload(action, path, file.get("name"))
                await self.handoff.in_turn(self._perform(action, actor, channel, thread))
            except UserError as error:
                await self._tell(actor, channel, str(error), thread=thread)

    def _too_big(self, file: dict, language: str) -> str | None:
        """What to tell when a file Slack describes is over the upload limit; None when it is not."""
        limit, size = self.core.settings.max_upload_bytes, int(file.get("size") or 0)
        if size <= limit:
            return None
        return say(language, "upload.too_big", name=file.get("name"), size=size, limit=limit)

    async def _download(self, file: dict, folder: Path, language: str) -> Path:
        """The file a person uploaded, fetched into `folder` with the bot token and cut off past the upload limit."""
        info = (await self.client.files_info(file=file["id"]))["file"]
        name = Path(info.get("name") or file["id"]).name
        limit = self.core.settings.max_upload_bytes
        target = folder / name
        headers = {"Authorization": f"Bearer {self.client.token}"}
        url = info["url_private_download"]
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
            if answer.status != 200:
                raise UserError(say(language, "upload.not_given", name=name, status=answer.status))
            if answer.content_type == "text/html":
                raise UserError(say(language, "upload.html_instead", name=name))
            size = 0
            with target.open("wb") as out:
                async for chunk in answer.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise UserError(say(language, "upload.too_big_unknown", name=name, limit=limit))
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


def _is_command(request: web.Request, body: str) -> bool:
    """Whether a request is a slash command (a form with a `command`; interactions send a `payload`)."""
    return request.content_type == "application/x-www-form-urlencoded" and bool(parse_qs(body).get("command"))


def _actor(user_id: str, name: str | None, channel: str) -> Actor:
    """A Slack user; the channel they act from counts as one of their groups, so a project may name a channel."""
    return Actor("slack", user_id, name, groups=(channel,))
