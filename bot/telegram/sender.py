"""The outbox's Telegram side: a message as HTML with its inline keyboard (a long one in parts, or as a file), into
its run's thread as a reply to the run's card; its charts as photos and its report as a document after it; edits
in place, never one that changes nothing; Telegram's refusals in words, and flood control (429 with
parameters.retry_after, aiogram's TelegramRetryAfter) handed to the outbox as RateLimited."""

import hashlib
import json
from pathlib import Path

from aiogram import Bot
from aiogram.enums import ParseMode
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramForbiddenError, TelegramRetryAfter
from aiogram.types import BufferedInputFile, FSInputFile, InlineKeyboardMarkup, ReplyParameters

from bot.core.messages import Message
from bot.core.outbox import RateLimited, Undeliverable, attach
from bot.telegram import markup
from bot.telegram.memory import Memory

NOT_MODIFIED = "message is not modified"
# Refusals that no retry can change (their descriptions as the Bot API words them), as what a person should do.
FOR_GOOD = {
    "chat not found": "tuneloop cannot see chat {chat}: add the bot to it, then try again",
    "bot was kicked": "tuneloop was removed from chat {chat}: add it again, then try again",
    "bot is not a member": "tuneloop is not in chat {chat}: add it, then try again",
    "bot was blocked by the user": "the bot was blocked in chat {chat}: unblock it (Restart), then try again",
    "have no rights to send": "tuneloop may not write in chat {chat}: let it send messages, then try again",
}


def refusal(error: TelegramAPIError, chat: str) -> Exception:
    """An aiogram error as the outbox's exceptions: RateLimited, Undeliverable (with its sentence), or itself."""
    if isinstance(error, TelegramRetryAfter):
        return RateLimited(float(error.retry_after))
    if isinstance(error, TelegramBadRequest | TelegramForbiddenError):
        said = error.message.lower()
        for words, sentence in FOR_GOOD.items():
            if words in said:
                return Undeliverable(sentence.format(chat=chat))
    return error


class TelegramSender:
    platform = "telegram"

    def __init__(self, bot: Bot, memory: Memory) -> None:
        self.bot, self.memory = bot, memory

    async def post(self, channel: str, thread: str | None, message: Message) -> str:
        texts = markup.parts(message)
        whole = None
        if len(texts) > markup.MOST_PARTS:
            whole, texts = message.text, texts[:1]
        keys = markup.keyboard(message.buttons)
        await self._remember_confirmations(message)
        reply = _reply_to(thread)
        posted = await self._send_text(channel, texts[0], keys if len(texts) == 1 else None, reply)
        for number, text in enumerate(texts[1:], start=2):
            last = number == len(texts)

            async def send_part(text: str = text, last: bool = last) -> None:
                nonlocal posted
                sent = await self._send_text(channel, text, keys if last else None, reply)
                if last:
                    posted = sent

            await attach(send_part, f"part {number} of a message into {channel}")
        reply = reply or _reply_to(posted)
        if whole is not None:
            content = BufferedInputFile(whole.encode(), filename="message.txt")
            await attach(lambda: self._send_file(channel, content, reply), f"a long message as a file into {channel}")
        for path in message.images:
            await attach(lambda path=path: self._send_file(channel, path, reply, photo=True), f"{path.name}")
        for path in message.files:
            await attach(lambda path=path: self._send_file(channel, path, reply), f"{path.name}")
        return posted

    async def update(self, channel: str, message_id: str, message: Message) -> None:
        text, keys = markup.card_text(message), markup.keyboard(message.buttons)
        await self._remember_confirmations(message)  # a card gains its Approve & deploy in an edit
        shown = _digest(text, keys)
        if await self.memory.recall("shown", f"{channel}:{message_id}") == shown:
            return  # Telegram refuses an edit that changes nothing
        try:
            await self.bot.edit_message_text(
                chat_id=channel, message_id=int(message_id), text=text, parse_mode=ParseMode.HTML, reply_markup=keys
            )
        except TelegramBadRequest as error:
            if NOT_MODIFIED not in error.message:
                raise refusal(error, channel) from None
        except TelegramAPIError as error:
            raise refusal(error, channel) from None
        await self.memory.remember("shown", f"{channel}:{message_id}", shown)

    async def _send_text(
        self, channel: str, text: str, keys: InlineKeyboardMarkup | None, reply: ReplyParameters | None
    ) -> str:
        try:
            sent = await self.bot.send_message(
                chat_id=channel, text=text, parse_mode=ParseMode.HTML, reply_markup=keys, reply_parameters=reply
            )
        except TelegramAPIError as error:
            raise refusal(error, channel) from None
        await self.memory.remember("shown", f"{channel}:{sent.message_id}", _digest(text, keys))
        return str(sent.message_id)

    async def _send_file(
        self, channel: str, file: Path | BufferedInputFile, reply: ReplyParameters | None, *, photo: bool = False
    ) -> None:
        if isinstance(file, Path):
            if not file.is_file():
                raise FileNotFoundError(f"{file} is not there")
            caption = markup.escape(markup.cut(file.name, markup.CAPTION))
            file = FSInputFile(file, filename=file.name)
        else:
            caption = None
        send = self.bot.send_photo if photo else self.bot.send_document
        try:
            await send(channel, file, caption=caption, parse_mode=ParseMode.HTML, reply_parameters=reply)
        except TelegramAPIError as error:
            raise refusal(error, channel) from None

    async def _remember_confirmations(self, message: Message) -> None:
        """The question a button asks before acting, for whoever presses it (the button carries only its key)."""
        for button in message.buttons:
            if button.confirm and button.key:
                await self.memory.remember("confirm", button.key, {"question": button.confirm, "label": button.label})


def _reply_to(message_id: str | None) -> ReplyParameters | None:
    """Into a run's thread: a reply to its card; sent anyway when the card was deleted."""
    if message_id is None:
        return None
    return ReplyParameters(message_id=int(message_id), allow_sending_without_reply=True)


def _digest(text: str, keys: InlineKeyboardMarkup | None) -> str:
    shown = json.dumps([text, keys.model_dump(exclude_none=True) if keys else None], sort_keys=True)
    return hashlib.sha256(shown.encode()).hexdigest()
