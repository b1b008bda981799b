"""The Telegram face: an aiogram 3 bot (long polling or a webhook) over the application core. markup.py renders
core messages as Telegram HTML within Telegram's limits, sender.py is the outbox's Telegram side, app.py reads
commands, documents, replies and button presses, serve.py runs the bot with the event relay."""
