"""The --target option: a built-in name or a target file, and the one-line legality verdict of a written model."""
from __future__ import annotations

TARGET_METAVAR = "NAME|FILE"
TARGET_HELP_SUFFIX = ("; or a target file (TOML, docs/targets.md)")


def resolve_target(value):
    """Returns a built-in target's name as given, or the Target read from the file ``value`` (exit 2 if bad)."""
    from fcnquant.targets import BUILTIN_NAMES, get_target

    return value if value in BUILTIN_NAMES else get_target(value)


def target_arg(target) -> str:
    """Returns what to pass as --target to name ``target`` again (its name, or its file)."""
    return target if isinstance(target, str) else target.source


def print_verdict(model_path, target, command: str = "fcnquant check") -> None:
    """Prints one line: whether the model at ``model_path`` runs as ``target``'s integer arithmetic."""
    import shlex

    from fcnquant.check import check_model

    report = check_model(model_path, target)
    if report.legal:
        print(f"check ({report.target}): legal")
        return
    cmd = " ".join(shlex.quote(str(c)) for c in (*command.split(), model_path, "--target", target_arg(target)))
    print(f"check ({report.target}): {report.summary()} - run `{cmd}`")
