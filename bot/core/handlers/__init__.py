"""What each action does, one module per concept; `HANDLERS` maps an action's type to the function that carries
it out (`bot.core.perform.Core.perform` calls it inside one unit of work)."""

from bot.core.context import Handler
from bot.core.handlers import data, deploys, local, projects, reviews, runs, synth

HANDLERS: dict[type, Handler] = {
    **projects.HANDLERS,
    **data.HANDLERS,
    **runs.HANDLERS,
    **reviews.HANDLERS,
    **deploys.HANDLERS,
    **synth.HANDLERS,
    **local.HANDLERS,
}
