"""The `autosafe` command: one entry point over the flows and the catalog.

User mistakes (bad config, bad input files) end in one line on stderr naming what was
wrong, and exit status 2; never a traceback.
"""

from __future__ import annotations

import os

# Prefect's own INFO lines would drown the progress bars; they still reach the Prefect API.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import typer  # noqa: E402

from flows import deploy_cli, eval_cli, inspect_cli, report_cli, run_cli, train_cli  # noqa: E402
from flows.catalog_cli import catalog_app  # noqa: E402
from flows.engines_cli import engines_app  # noqa: E402
from flows.model_cli import model_app  # noqa: E402

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(catalog_app, name="catalog", help="Inspect and validate toolkits and risk outcomes.")
app.add_typer(model_app, name="model", help="Fetch and inspect the embedded default model.")
app.add_typer(engines_app, name="engines", help="Long-lived engines on a Ray cluster, shared by runs.")
run_cli.register(app)
train_cli.register(app)
inspect_cli.register(app)
report_cli.register(app)
eval_cli.register(app)
deploy_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
