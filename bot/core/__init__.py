"""The application core every face calls: what a person can do, once.

A face (the terminal, Slack, Telegram) turns what a person typed or pressed into an `Action` (`grammar` parses chat
text; a button carries a stored action under a short key), calls `perform` with the `Actor` who asked, and renders
the `Message`s it gets back. `perform` holds what every action shares (a unit of work, the language, errors as
sentences, audited refusals); what each action does lives in `handlers`, a module per concept (projects, data, runs,
reviews, deploys), each handler taking the action's `context.Context`. Business rules, permissions, the catalogue of
sentences in English and Chinese and the rendering of events, histories, reports and review cards live here; the
engine under it stays the authority on runs.

A chat face also plugs a `Sender` (post, update) into an `outbox.Outbox` (pacing, retry-after, coalesced edits),
posts an action's answers with `conversations.deliver` (a run's card opens its thread, kept in `conversations`), and
runs an `event_relay.EventRelay` on the event stream to keep each run's card and thread up to date. It hands its
work off after answering the platform with `handoff.HandOff`, tells repeated deliveries apart with
`deliveries.Deliveries`, and brings a person's file in through `uploads.upload_folder`.
"""
