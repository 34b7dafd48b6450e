"""The ``mmpipe`` command.  Config parsing lives here only."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline.config import RunConfig
from pipeline.errors import DataError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Clinical multimodal prediction pipeline: EHR, ECG, notes and imaging.")


@app.callback()
def _options(quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars and no progress lines"),
             log_json: Optional[Path] = typer.Option(None, "--log-json",
                                                     help="write structured stage events to this file "
                                                          "(one JSON object per line)")):
    """Options for every command: mmpipe [--quiet] [--log-json FILE] COMMAND ..."""
    from pipeline import progress
    progress.configure(quiet=quiet, log_json=log_json)


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def synth(patients: int = typer.Option(500, help="number of patients"),
          seed: int = typer.Option(0, help="random seed"),
          out: Path = typer.Option(..., help="output ROOT folder")):
    """Generate a synthetic cohort in the MIMIC-IV, -ECG, -Note and CXR-JPG layouts."""
    from pipeline.synthetic import generate_cohort
    summary = generate_cohort(out, n_patients=patients, seed=seed)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, dict)))


@app.command()
def inspect(data: Path = typer.Option(..., help="data ROOT to look at (read-only)"),
            json_out: Optional[Path] = typer.Option(None, "--json", help="write the details as JSON"),
            config: Optional[Path] = typer.Option(None, help="config file (JSON or YAML)"),
            deep: bool = typer.Option(False, help="decode every image (slow) instead of structure checks")):
    """Read-only check of what a data folder holds."""
    from pipeline.jobs.inspect import inspect_data
    try:
        cfg = RunConfig.load(config)
        code = inspect_data(data, cfg, json_out, deep=deep)
    except DataError as e:
        _fail(e)
    raise typer.Exit(code)


@app.command()
def train(data: Path = typer.Option(..., help="data ROOT"), out: Path = typer.Option(..., help="run folder"),
          task: Optional[str] = typer.Option(None, help="mortality | icu_mortality | los3 | los7 | readmission30"),
          config: Optional[Path] = typer.Option(None, help="config file (JSON or YAML)"),
          report: bool = typer.Option(True, help="write the HTML report at the end"),
          engine: str = typer.Option("local", help="local | dask"),
          scheduler: Optional[str] = typer.Option(None, help="dask scheduler address, or 'local'"),
          shard_size: int = typer.Option(5000, help="admissions per shard of the feature stages (dask engine)")):
    """Run every stage, train the models and write scores, audit, quarantine and report."""
    from pipeline.engine import Engine
    from pipeline.jobs.train import train as run_train
    try:
        cfg = RunConfig.load(config)
        if task:
            cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"name": task})})
            cfg = RunConfig.model_validate(cfg.model_dump())
        with Engine(engine, scheduler, shard_rows=shard_size) as eng:
            run_train(data, out, cfg, report=report, engine=eng)
    except DataError as e:
        _fail(e)


@app.command()
def score(model: Path = typer.Option(..., help="run folder written by `mmpipe train`"),
          input: Path = typer.Option(..., help="data ROOT to score (raw layouts), or a patient-tensor folder "
                                                "(index.json + shards)"),
          output: Path = typer.Option(..., help="output .parquet file"),
          engine: str = typer.Option("local", help="local | dask"),
          scheduler: Optional[str] = typer.Option(None, help="dask scheduler address, or 'local'"),
          shard_size: int = typer.Option(5000, help="admissions per shard (scoring and, with dask, feature stages)")):
    """Score every admission of a data folder with a trained model."""
    from pipeline.jobs.score import score as run_score
    try:
        run_score(model, input, output, engine=engine, scheduler=scheduler, shard_size=shard_size,
                  return_frame=False)
    except DataError as e:
        _fail(e)


@app.command()
def report(run: Path = typer.Option(..., help="run folder"),
           out: Optional[Path] = typer.Option(None, help="HTML file (default RUN/report/index.html)")):
    """Write the interpretability report of a run."""
    from pipeline.jobs.report import write_report
    try:
        typer.echo(str(write_report(run, out)))
    except DataError as e:
        _fail(e)


@app.command()
def demo(patients: int = typer.Option(500, help="synthetic patients"),
         seed: int = typer.Option(0),
         workdir: Path = typer.Option(Path("runs/demo"), help="where data and run go"),
         reports: Path = typer.Option(Path("reports"), help="reports folder")):
    """Synthetic cohort -> train -> score -> report, end to end."""
    from pipeline.jobs.demo import run_demo
    try:
        run_demo(patients, seed, workdir, reports)
    except DataError as e:
        _fail(e)


@app.command()
def export(run: Path = typer.Option(..., help="run folder written by `mmpipe train`"),
           to: str = typer.Option("meds", help="output format (meds)"),
           out: Path = typer.Argument(..., help="output folder (replaced when it is an earlier export)")):
    """Write a run's EHR events, pointers to its ECGs, notes and images, splits and labels as a MEDS dataset."""
    from pipeline.jobs.export import export_meds
    try:
        if to != "meds":
            raise DataError(f"unknown export format {to!r}", field="--to", hint="the one format is meds")
        s = export_meds(run, out)
        typer.echo(f"wrote {s['out']}: {s['rows']} rows, {s['subjects']} subjects, {s['labels']} labels "
                   f"({s['task']}), valid MEDS")
    except DataError as e:
        _fail(e)


def main() -> None:  # pragma: no cover
    app(prog_name="mmpipe")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
