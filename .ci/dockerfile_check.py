#!/usr/bin/env python3
# Static check of docker/Dockerfile for CI machines without a Docker engine (used by
# .ci/check_docker.sh): parses instructions, stages and apt-get installs, and enforces the
# project's image rules. Prints the packages each stage installs when asked (--packages).
import argparse
import json
import re
import shlex
import sys

INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}
# Forms the instructions take: exec form must be a JSON array of strings.
EXEC_FORM = {"CMD", "ENTRYPOINT", "SHELL"}
# The images the project builds from: CUDA devel for the builder, CUDA runtime at the end.
BUILDER_IMAGE = re.compile(r"^nvidia/cuda:13\.0\.\d+-devel-ubuntu24\.04$")
RUNTIME_IMAGE = re.compile(r"^nvidia/cuda:13\.0\.\d+-runtime-ubuntu24\.04$")
# What the builder stage must install (Open MPI, Boost.Program_options, GoogleTest, JSON, cmake).
BUILDER_NEEDS = {"cmake", "libopenmpi-dev", "openmpi-bin", "libboost-program-options-dev",
                 "libgtest-dev", "nlohmann-json3-dev"}
RUNTIME_NEEDS = {"openmpi-bin"}


class Instruction:
    def __init__(self, line, keyword, args):
        self.line = line
        self.keyword = keyword
        self.args = args


def logical_lines(text):
    """Yields (first line number, text) with continuations joined; comments dropped."""
    escape = "\\"
    directives_open = True
    pending, start = [], 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if directives_open:
            m = re.match(r"^#\s*(\w+)\s*=\s*(\S+)\s*$", stripped)
            if m:
                if m.group(1).lower() == "escape":
                    escape = m.group(2)
                continue
            directives_open = False
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith(escape):
            pending.append(stripped[: -len(escape)])
            continue
        pending.append(stripped)
        yield start, " ".join(p for p in pending if p)
        pending = []
    if pending:
        raise ValueError(f"line {start}: continuation runs past the end of the file")


def parse(text):
    out = []
    for line, body in logical_lines(text):
        keyword, _, args = body.partition(" ")
        out.append(Instruction(line, keyword, args.strip()))
    return out


def substitute(value, variables):
    def repl(m):
        name = m.group(1) or m.group(2)
        return variables.get(name, "")
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, value)


def split_commands(script):
    """Splits a shell command line at &&, || and ; into token lists."""
    tokens = shlex.split(script, posix=True)
    commands, current = [], []
    for tok in tokens:
        if tok in ("&&", "||", ";", "|"):
            if current:
                commands.append(current)
            current = []
        elif tok.endswith(";") and tok != ";":
            current.append(tok[:-1])
            commands.append(current)
            current = []
        else:
            current.append(tok)
    if current:
        commands.append(current)
    return commands


def check(text):
    errors, stages = [], []
    try:
        instructions = parse(text)
    except ValueError as e:
        return [str(e)], []
    if not instructions:
        return ["the Dockerfile has no instructions"], []
    global_args = {}
    seen_from = False
    for ins in instructions:
        where = f"line {ins.line}"
        if ins.keyword.upper() not in INSTRUCTIONS:
            errors.append(f"{where}: unknown instruction {ins.keyword!r}")
            continue
        if ins.keyword != ins.keyword.upper():
            errors.append(f"{where}: write instructions in upper case ({ins.keyword})")
        kw = ins.keyword.upper()
        if not ins.args:
            errors.append(f"{where}: {kw} has no arguments")
            continue
        if kw == "MAINTAINER":
            errors.append(f"{where}: MAINTAINER is deprecated, use LABEL")
        if not seen_from and kw not in ("ARG", "FROM"):
            errors.append(f"{where}: {kw} before the first FROM (only ARG may come first)")
        if kw == "ARG":
            name, eq, default = ins.args.partition("=")
            if not re.fullmatch(r"[A-Za-z_]\w*", name):
                errors.append(f"{where}: ARG name {name!r} is not a valid name")
            if not seen_from:
                global_args[name] = default if eq else ""
            elif stages:
                stages[-1]["args"].add(name)
            continue
        if kw == "FROM":
            seen_from = True
            words = [w for w in ins.args.split() if not w.startswith("--platform=")]
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
                errors.append(f"{where}: FROM must be 'FROM image[:tag] [AS name]'")
                continue
            image = substitute(words[0], global_args)
            name = words[2] if len(words) == 3 else None
            if name and any(s["name"] == name for s in stages):
                errors.append(f"{where}: stage name {name!r} used twice")
            if name and not re.fullmatch(r"[a-z][a-z0-9_.-]*", name):
                errors.append(f"{where}: stage name {name!r} must be lower case")
            if ":" not in image.split("/")[-1] and "@" not in image:
                errors.append(f"{where}: image {image!r} has no tag (pin a version)")
            stages.append({"name": name, "image": image, "line": ins.line, "packages": [],
                           "args": set(), "copies_from": []})
            continue
        stage = stages[-1]
        if kw in EXEC_FORM or (kw in ("RUN",) and ins.args.startswith("[")):
            if ins.args.startswith("["):
                try:
                    value = json.loads(ins.args)
                    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                        raise ValueError
                except ValueError:
                    errors.append(f"{where}: {kw} exec form must be a JSON array of strings")
        if kw in ("ENV", "LABEL"):
            pairs = shlex.split(ins.args)
            if not pairs or not all(re.fullmatch(r"[A-Za-z_][\w.-]*=.*", p, re.S) for p in pairs):
                errors.append(f"{where}: {kw} must be KEY=VALUE pairs")
        if kw in ("COPY", "ADD"):
            words = shlex.split(ins.args)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            if len(paths) < 2:
                errors.append(f"{where}: {kw} needs a source and a destination")
            for flag in flags:
                if flag.startswith("--from="):
                    ref = flag.split("=", 1)[1]
                    names = [s["name"] for s in stages[:-1]]
                    if ref not in names and not (ref.isdigit() and int(ref) < len(stages) - 1):
                        errors.append(f"{where}: COPY --from={ref} names no earlier stage")
                    stage["copies_from"].append(ref)
            if kw == "ADD" and not any(p.startswith(("http://", "https://")) for p in paths):
                errors.append(f"{where}: use COPY for local files, not ADD")
        if kw == "WORKDIR" and not ins.args.startswith(("/", "$")):
            errors.append(f"{where}: WORKDIR must be absolute")
        if kw == "RUN" and not ins.args.startswith("["):
            check_run(ins, stage, errors)
    if not stages:
        errors.append("no FROM instruction")
    return errors, stages


def check_run(ins, stage, errors):
    where = f"line {ins.line}"
    script = re.sub(r"^(--\S+\s+)+", "", ins.args)
    try:
        commands = split_commands(script)
    except ValueError as e:
        errors.append(f"{where}: RUN is not valid shell: {e}")
        return
    updated = False
    installed = False
    for cmd in commands:
        if cmd[:1] == ["apt"]:
            errors.append(f"{where}: use apt-get in scripts, not apt")
        if cmd[:2] == ["apt-get", "update"]:
            updated = True
        if len(cmd) >= 2 and cmd[0] == "apt-get" and "install" in cmd[1:]:
            installed = True
            if not updated:
                errors.append(f"{where}: apt-get install without apt-get update in the same RUN")
            options = [w for w in cmd[1:] if w.startswith("-")]
            if not ({"-y", "--yes", "-qy", "-yq"} & set(options)):
                errors.append(f"{where}: apt-get install needs -y")
            if "--no-install-recommends" not in options:
                errors.append(f"{where}: apt-get install needs --no-install-recommends")
            packages = [w for w in cmd[cmd.index("install") + 1:] if not w.startswith("-")]
            if not packages:
                errors.append(f"{where}: apt-get install names no package")
            for p in packages:
                if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+(=[\w.:~+-]+)?", p):
                    errors.append(f"{where}: {p!r} is not a Debian package name")
            if packages != sorted(packages):
                errors.append(f"{where}: keep the package list sorted")
            stage["packages"].extend(packages)
    if installed and "rm -rf /var/lib/apt/lists/*" not in script:
        errors.append(f"{where}: remove /var/lib/apt/lists/* in the RUN that installs")


def check_policy(stages, errors):
    if len(stages) < 2:
        errors.append("the image must be multi-stage (builder and runtime)")
        return
    builder, final = stages[0], stages[-1]
    if not BUILDER_IMAGE.match(builder["image"]):
        errors.append(f"builder stage: {builder['image']} is not nvidia/cuda 13.0.x devel ubuntu24.04")
    if not RUNTIME_IMAGE.match(final["image"]):
        errors.append(f"final stage: {final['image']} is not nvidia/cuda 13.0.x runtime ubuntu24.04")
    for stage, needs in ((builder, BUILDER_NEEDS), (final, RUNTIME_NEEDS)):
        missing = needs - set(p.split("=")[0] for p in stage["packages"])
        if missing:
            errors.append(f"stage {stage['name']}: missing packages {sorted(missing)}")
    if builder["name"] not in final["copies_from"]:
        errors.append("final stage copies nothing from the builder stage")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dockerfile")
    ap.add_argument("--packages", action="store_true",
                    help="print 'stage package...' per stage that installs packages")
    args = ap.parse_args()
    with open(args.dockerfile, encoding="utf-8") as f:
        text = f.read()
    errors, stages = check(text)
    if not errors:
        check_policy(stages, errors)
    for e in errors:
        print(f"{args.dockerfile}: {e}", file=sys.stderr)
    if errors:
        return 1
    if args.packages:
        for s in stages:
            if s["packages"]:
                print(s["name"] or s["image"], " ".join(s["packages"]))
    else:
        for s in stages:
            print(f"stage {s['name']}: FROM {s['image']} (line {s['line']}), "
                  f"{len(s['packages'])} apt packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
