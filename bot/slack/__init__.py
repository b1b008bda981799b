"""The Slack face: `app` (the Bolt app and its listeners), `blocks` (Block Kit and modals, user text escaped),
`sender` (the outbox's Slack side), `serve` (`tuneloop bot slack`: the app and the event relay in one loop)."""
