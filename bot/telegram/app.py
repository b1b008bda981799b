"""The Telegram face: an aiogram router that reads `/finetune` (a message's text, or a document's caption), a
document sent in reply to the bot's prompt, the text replied to a force-reply prompt (a Fix's answer, an override's
reason) and button presses, and hands every action to the core. It decides nothing about runs, reviews, approvals
or permissions.

Every button press is answered at once (the client shows a spinner until then) and the work handed off; an update
Telegram hands over again (a restarted bot whose last offset was never confirmed) is dropped, across every bot
sharing Redis. Telegram has no private replies in a group: a refusal or mistake is a reply to the person's message."""

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiogram import Bot, Dispatcher, F, Router
from aiogram.enums import ParseMode
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command, CommandObject
from aiogram.types import (
    CallbackQuery,
    Document,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    ReplyParameters,
    Update,
    User,
)
from aiogram.types import Message as TelegramMessage

from bot.core import conversations
from bot.core.actions import Action, StartRun, with_text
from bot.core.catalogue import say
from bot.core.deliveries import Deliveries
from bot.core.errors import UserError
from bot.core.handoff import HandOff
from bot.core.identity import Actor
from bot.core.outbox import Outbox, Undeliverable
from bot.core.perform import Core
from bot.core.uploads import upload_folder, with_upload
from bot.telegram import markup
from bot.telegram.memory import Memory
from bot.telegram.sender import refusal

COMMAND = "finetune"
CLOUD_DOWNLOAD_LIMIT = 20 * 1024 * 1024  # getFile on the cloud Bot API (core.telegram.org/bots/api#getfile)
logger = logging.getLogger(__name__)


class TelegramFace:
    def __init__(
        self,
        core: Core,
        bot: Bot,
        outbox: Outbox,
        deliveries: Deliveries,
        memory: Memory,
        *,
        local_files: bool = False,
        uploads: Path | None = None,
    ) -> None:
        self.core, self.bot, self.outbox, self.deliveries, self.memory = core, bot, outbox, deliveries, memory
        self.local_files = local_files  # a local Bot API server (--local): no 20 MB limit on downloads
        self.uploads = uploads or core.settings.home / "uploads" / "telegram"
        self.handoff = HandOff("Telegram")

    def dispatcher(self) -> Dispatcher:
        dispatcher = Dispatcher()
        dispatcher.update.outer_middleware(self._drop_repeats)
        router = Router(name="tuneloop")
        router.message(Command(COMMAND))(self._command)
        router.message(F.document)(self._document)
        router.message(F.reply_to_message & F.text)(self._reply)
        router.callback_query(F.data)(self._pressed)
        dispatcher.include_router(router)
        return dispatcher

    async def idle(self) -> None:
        """Wait for the work handed off so far (tests, and a clean stop)."""
        await self.handoff.idle()
        await self.outbox.drain()

    # --- listeners --------------------------------------------------------------------------------------------

    async def _drop_repeats(self, handler: Any, update: Update, data: dict[str, Any]) -> Any:
        if not await self.deliveries.first_time(f"{self.bot.id}:{update.update_id}"):
            return None
        return await handler(update, data)

    async def _command(self, message: TelegramMessage, command: CommandObject) -> None:
        actor = _actor(message.from_user, message.chat.id)
        text = (command.args or "").strip() or "help"
        self.handoff.start(self._command_text(text, actor, message))

    async def _document(self, message: TelegramMessage) -> None:
        actor = _actor(message.from_user, message.chat.id)
        self.handoff.start(self._document_given(message, actor))

    async def _reply(self, message: TelegramMessage) -> None:
        replied = message.reply_to_message
        if replied is None or replied.from_user is None or replied.from_user.id != self.bot.id:
            return  # people talking to each other
        actor = _actor(message.from_user, message.chat.id)
        self.handoff.start(self._reply_given(message, actor))

    async def _pressed(self, callback: CallbackQuery) -> None:
        await callback.answer()  # at once: the person's client shows a spinner until it is answered
        pressed = callback.message
        if pressed is None:
            return
        actor = _actor(callback.from_user, pressed.chat.id)
        kind, _, key = (callback.data or "").partition(":")
        chat, message_id = str(pressed.chat.id), str(pressed.message_id)
        shown = pressed.html_text if isinstance(pressed, TelegramMessage) else ""
        if kind == markup.DISMISS:
            self.handoff.start(self._dismiss(actor, chat, message_id, shown))
        elif kind == markup.ASK:
            self.handoff.start(self._ask(key, actor, chat, message_id, shown))
        elif kind == markup.CONFIRM:
            self.handoff.start(self._confirm(key, actor, chat, message_id))
        elif kind == markup.DO:
            self.handoff.start(self._press(key, None, actor, chat, message_id, shown))

    # --- the work, after answering ------------------------------------------------------------------------------

    async def _command_text(self, text: str, actor: Actor, message: TelegramMessage) -> None:
        """A command's text as an action; with a document, the run on that file; a project named without data
        asks for the file with a force-reply prompt."""
        chat, asked = str(message.chat.id), str(message.message_id)
        try:
            action = await asyncio.to_thread(self.core.parse, text, actor)
        except UserError as error:
            await self._tell(chat, asked, str(error))
            return
        if message.document is not None:
            await self._start_with_file(action, message.document, actor, chat, asked)
        elif isinstance(action, StartRun) and action == StartRun(project=action.project):
            language = await asyncio.to_thread(self.core.language_of, actor, action.project)
            prompt = say(language, "upload.send_data", project=action.project)
            sent = await self._prompt(chat, asked, prompt, placeholder=f"{action.project} …")
            if sent is not None:
                await self.memory.remember("prompt", f"{chat}:{sent}", {"start": action.project})
        else:
            await self._perform(action, actor, chat, asked)

    async def _document_given(self, message: TelegramMessage, actor: Actor) -> None:
        """A document in reply to the bot's prompt for data; any other document is explained, not ignored, in a
        private chat (in a group it may be for people)."""
        chat, asked = str(message.chat.id), str(message.message_id)
        waiting = await self._waiting(message)
        document = message.document
        assert document is not None
        if waiting is None or "start" not in waiting:
            if message.chat.type == "private":
                language = await asyncio.to_thread(self.core.language_of, actor)
                said = say(language, "upload.without_command", name=document.file_name or "?")
                await self._tell(chat, asked, said)
            return
        try:
            text = f"{waiting['start']} {message.caption or ''}".strip()
            action = await asyncio.to_thread(self.core.parse, text, actor)
        except UserError as error:
            await self._tell(chat, asked, str(error))
            return
        await self._start_with_file(action, document, actor, chat, asked)

    async def _reply_given(self, message: TelegramMessage, actor: Actor) -> None:
        """Text replied to a prompt: the text a pressed button asked for, or a run's options without a file."""
        chat, asked = str(message.chat.id), str(message.message_id)
        waiting = await self._waiting(message)
        if waiting is None:
            return
        text = (message.text or "").strip()
        if "start" in waiting:
            try:
                action = await asyncio.to_thread(self.core.parse, f"{waiting['start']} {text}", actor)
            except UserError as error:
                await self._tell(chat, asked, str(error))
                return
            await self._perform(action, actor, chat, asked)
            return
        await self._press(waiting["key"], text, actor, chat, waiting["message"], waiting.get("shown", ""))

    async def _waiting(self, message: TelegramMessage) -> dict | None:
        replied = message.reply_to_message
        if replied is None:
            return None
        return await self.memory.recall("prompt", f"{message.chat.id}:{replied.message_id}")

    async def _ask(self, key: str, actor: Actor, chat: str, message_id: str, shown: str) -> None:
        """A button that needs text first: a force-reply prompt, whose reply carries the action out."""
        try:
            _, prompt = await asyncio.to_thread(self.core.button_for_key, key)
        except UserError as error:
            await self._tell(chat, message_id, str(error))
            return
        sent = await self._prompt(chat, message_id, f"{actor.name}: {prompt or ''}".strip(), placeholder=prompt or "")
        if sent is not None:
            waiting = {"key": key, "message": message_id, "shown": shown}
            await self.memory.remember("prompt", f"{chat}:{sent}", waiting)

    async def _confirm(self, key: str, actor: Actor, chat: str, message_id: str) -> None:
        """A button that confirms first (deploying): its question, with the button itself and Cancel."""
        asked = await self.memory.recall("confirm", key) or {}
        question, label = asked.get("question") or "?", asked.get("label") or "OK"
        language = await asyncio.to_thread(self.core.language_of, actor)
        keys = InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    InlineKeyboardButton(text=label, callback_data=f"{markup.DO}:{key}"),
                    InlineKeyboardButton(text=say(language, "button.cancel_confirm"), callback_data=markup.DISMISS),
                ]
            ]
        )
        try:
            await self.bot.send_message(
                chat_id=chat,
                text=markup.escape(question),
                parse_mode=ParseMode.HTML,
                reply_markup=keys,
                reply_parameters=ReplyParameters(message_id=int(message_id), allow_sending_without_reply=True),
            )
        except TelegramAPIError as error:
            logger.warning("could not ask %s to confirm: %s", actor.identity, refusal(error, chat))

    async def _press(self, key: str, text: str | None, actor: Actor, chat: str, message_id: str, shown: str) -> None:
        """Carry out a pressed button's action (with the text its prompt asked for), then replace the buttons of
        the message pressed with what was done, unless it is a run's card, which the relay keeps up to date."""
        try:
            action = await asyncio.to_thread(self.core.action_for_key, key)
            if text is not None:
                action = with_text(action, text)
        except UserError as error:
            await self._tell(chat, message_id, str(error))
            return
        messages = await self._perform(action, actor, chat, message_id)
        if not messages:
            return
        card = await asyncio.to_thread(conversations.is_card, self.core.engine, "telegram", chat, message_id)
        if not card:
            await self._settle(chat, message_id, shown, messages[0].title)

    async def _dismiss(self, actor: Actor, chat: str, message_id: str, shown: str) -> None:
        language = await asyncio.to_thread(self.core.language_of, actor)
        await self._settle(chat, message_id, shown, say(language, "confirm.not_done"))

    async def _settle(self, chat: str, message_id: str, shown: str, outcome: str) -> None:
        """The pressed message without its buttons, what was done beneath what it showed."""
        text = f"{shown}\n\n<i>{markup.escape(markup.cut(outcome, 500))}</i>" if shown else markup.escape(outcome)
        try:
            await self.bot.edit_message_text(
                chat_id=chat, message_id=int(message_id), text=text, parse_mode=ParseMode.HTML, reply_markup=None
            )
        except TelegramAPIError as error:
            logger.warning("could not replace the buttons of %s: %s", message_id, refusal(error, chat))

    async def _perform(self, action: Action, actor: Actor, chat: str, asked: str | None) -> list | None:
        """Carry out `action` and post its answers; a refusal or mistake is told in reply to what was asked."""
        try:
            messages = await self.core.perform_async(action, actor)
            await conversations.deliver(self.core, self.outbox, messages, chat, asked)
        except (UserError, Undeliverable) as error:
            await self._tell(chat, asked, str(error))
            return None
        return messages

    async def _start_with_file(self, action: Action, document: Document, actor: Actor, chat: str, asked: str) -> None:
        """The run on the document: checked against the download limits, fetched into a folder of its own,
        imported by the core as a new dataset version, then removed."""
        name = Path(document.file_name or f"{document.file_unique_id}.jsonl").name
        language = await asyncio.to_thread(self.core.language_of, actor, getattr(action, "project", None))
        if not isinstance(action, StartRun):
            await self._tell(chat, asked, say(language, "upload.without_command", name=name))
            return
        size, limit = document.file_size or 0, self.core.settings.max_upload_bytes
        over_download_limit = say(language, "upload.over_download_limit", name=name, size=f"{size / 1024 / 1024:.1f}")
        if size > limit:
            await self._tell(chat, asked, say(language, "upload.too_big", name=name, size=size, limit=limit))
            return
        if size > CLOUD_DOWNLOAD_LIMIT and not self.local_files:
            await self._tell(chat, asked, over_download_limit)
            return
        with upload_folder(self.uploads) as folder:
            try:
                path = await self._download(document, folder / name)
            except TelegramAPIError as error:
                too_big = "file is too big" in error.message
                sentence = over_download_limit if too_big else say(language, "upload.not_given", name=name, status=400)
                await self._tell(chat, asked, sentence)
                return
            await self._perform(with_upload(action, path, name), actor, chat, asked)

    async def _download(self, document: Document, target: Path) -> Path:
        found = await self.bot.get_file(document.file_id)
        assert found.file_path is not None
        await self.bot.download_file(found.file_path, target)
        return target

    async def _prompt(self, chat: str, asked: str, text: str, *, placeholder: str) -> str | None:
        """A force-reply prompt (it works in privacy mode), in reply to what was asked; its message id."""
        force = ForceReply(selective=True, input_field_placeholder=markup.cut(placeholder, markup.PLACEHOLDER) or None)
        try:
            sent = await self.bot.send_message(
                chat_id=chat,
                text=markup.escape(markup.cut(text, markup.MESSAGE_TEXT)),
                parse_mode=ParseMode.HTML,
                reply_markup=force,
                reply_parameters=ReplyParameters(message_id=int(asked), allow_sending_without_reply=True),
            )
        except TelegramAPIError as error:
            logger.warning("could not ask in %s: %s", chat, refusal(error, chat))
            return None
        return str(sent.message_id)

    async def _tell(self, chat: str, asked: str | None, sentence: str) -> None:
        """A sentence for the person who asked, in reply to their message."""
        reply = ReplyParameters(message_id=int(asked), allow_sending_without_reply=True) if asked else None
        try:
            await self.bot.send_message(
                chat_id=chat,
                text=markup.escape(markup.cut(sentence, markup.MESSAGE_TEXT)),
                parse_mode=ParseMode.HTML,
                reply_parameters=reply,
            )
        except TelegramAPIError as error:
            logger.warning("could not tell chat %s %r: %s", chat, sentence, refusal(error, chat))


def _actor(user: User | None, chat: int) -> Actor:
    """A Telegram user; the chat they act from counts as one of their groups, so a project may name a chat."""
    if user is None:  # a channel's post or an anonymous group admin: the chat speaks
        return Actor("telegram", str(chat), None, groups=(str(chat),))
    name = user.username or user.full_name
    return Actor("telegram", str(user.id), name, groups=(str(chat),))
