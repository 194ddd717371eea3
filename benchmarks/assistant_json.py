"""Structured output on a real bundle: a smart-home JSON schema over a set of spoken commands.

Every answer decoded under the schema's grammar must parse and validate (the grammar's guarantee); how many
are *right* is the model's own doing. Speed: the same prompts decoded with and without the grammar, side
by side in one run, greedy: decode tok/s (goal: constrained >= 0.9x) and time to first token, the
grammar's compile and matcher included (goal: at most +20 ms).

    python benchmarks/assistant_json.py --bundle DIR [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgepipe.runtime.assistant.grammar import Constraint, Vocabulary, schema_grammar  # noqa: E402
from edgepipe.runtime.generator import Generator  # noqa: E402

DEVICES = ["lights", "thermostat", "fan", "tv", "door lock", "blinds"]
ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "office", "garage"]
SCHEMA = {
    "type": "object",
    "properties": {
        "device": {"enum": DEVICES},
        "room": {"enum": ROOMS},
        "action": {"enum": ["turn_on", "turn_off", "set"]},
        "value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 100}, {"type": "null"}]},
    },
    "required": ["device", "room", "action", "value"],
    "additionalProperties": False,
}
SYSTEM = (
    "You control a smart home. Answer every request with one JSON object: device (one of "
    + ", ".join(DEVICES)
    + "), room (one of "
    + ", ".join(ROOMS)
    + '), action ("turn_on", "turn_off" or "set") and value (a number for "set", else null).'
)
# Two worked examples before each command, as user and assistant turns (commands not in the set).
EXAMPLES = [
    ("Switch the garage lights on.", '{"device": "lights", "room": "garage", "action": "turn_on", "value": null}'),
    ("Set the kitchen thermostat to 19.", '{"device": "thermostat", "room": "kitchen", "action": "set", "value": 19}'),
]
# (command, the right answer's device, room, action, value)
COMMANDS = [
    ("Turn on the kitchen lights.", "lights", "kitchen", "turn_on", None),
    ("Switch off the lights in the bedroom.", "lights", "bedroom", "turn_off", None),
    ("Set the living room thermostat to 21.", "thermostat", "living room", "set", 21),
    ("Turn the fan in the office on.", "fan", "office", "turn_on", None),
    ("Please turn off the TV in the living room.", "tv", "living room", "turn_off", None),
    ("Lock the garage door.", "door lock", "garage", "turn_on", None),
    ("Open the bedroom blinds halfway.", "blinds", "bedroom", "set", 50),
    ("Bathroom lights off, please.", "lights", "bathroom", "turn_off", None),
    ("Set the office lights to 30 percent.", "lights", "office", "set", 30),
    ("Turn off the kitchen fan.", "fan", "kitchen", "turn_off", None),
    ("Make the bedroom thermostat 18 degrees.", "thermostat", "bedroom", "set", 18),
    ("Turn on the TV in the bedroom.", "tv", "bedroom", "turn_on", None),
    ("Close the living room blinds.", "blinds", "living room", "set", 0),
    ("Unlock the kitchen door.", "door lock", "kitchen", "turn_off", None),
    ("Living room lights on.", "lights", "living room", "turn_on", None),
    ("Set the garage thermostat to 10.", "thermostat", "garage", "set", 10),
]


class TimedConstraint(Constraint):
    """The constraint, its own time per token kept: the grammar's cost apart from the machine's load."""

    spent = 0.0
    steps = 0

    def mask(self, logits, remaining=None):  # type: ignore[no-untyped-def]
        begun = time.perf_counter()
        try:
            return super().mask(logits, remaining)
        finally:
            TimedConstraint.spent += time.perf_counter() - begun
            TimedConstraint.steps += 1

    def advance(self, token: int) -> None:
        begun = time.perf_counter()
        super().advance(token)
        TimedConstraint.spent += time.perf_counter() - begun


def validates(text: str) -> dict | None:
    import jsonschema

    try:
        value = json.loads(text)
        jsonschema.validate(value, SCHEMA)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return None
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a text-generation bundle (its chat on)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the commands")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    generator = Generator.from_bundle(args.bundle)
    started = time.perf_counter()
    vocabulary = Vocabulary.of(generator.tokenizer_path, generator.config.eos_token_ids[0])
    vocab_s = time.perf_counter() - started
    shots = [
        {"role": role, "content": text}
        for command, answer in EXAMPLES
        for role, text in (("user", command), ("assistant", answer))
    ]
    system = {"role": "system", "content": SYSTEM}
    prompts = [generator.encode_messages([system, *shots, {"role": "user", "content": c[0]}]) for c in COMMANDS]
    generator.generate(prompts[0], max_new_tokens=4)  # warm onnxruntime

    valid = right = 0
    runs: dict[str, list[dict[str, float]]] = {"free": [], "constrained": []}
    for round_ in range(args.rounds):
        for (command, *expected), ids in zip(COMMANDS, prompts, strict=True):
            # Side by side, alternating, so drift in the machine's load hits both alike.
            free = generator.generate(ids, max_new_tokens=args.max_new_tokens)
            begun = time.perf_counter()
            constraint = TimedConstraint(vocabulary, schema_grammar(SCHEMA))
            built_ms = (time.perf_counter() - begun) * 1000
            fixed = generator.generate(ids, max_new_tokens=args.max_new_tokens, constraint=constraint)
            for name, result, extra in (("free", free, 0.0), ("constrained", fixed, built_ms)):
                t = result.timings
                steps = max(t["new_tokens"] - 1, 0)
                runs[name].append({
                    "ttft_ms": t["time_to_first_token_ms"] + extra,
                    "steps": steps,
                    "decode_s": steps / t["decode_tokens_per_s"] if t["decode_tokens_per_s"] else 0.0,
                })  # fmt: skip
            if round_ == 0:
                answer = validates(fixed.text)
                valid += answer is not None
                ok = answer is not None and [answer[k] for k in ("device", "room", "action", "value")] == expected
                right += ok
                print(f"{'ok ' if ok else 'bad' if answer else 'INVALID'} {command!r} -> {fixed.text}")
    rate = {n: sum(r["steps"] for r in rs) / sum(r["decode_s"] for r in rs) for n, rs in runs.items()}
    ttft = {n: statistics.median(r["ttft_ms"] for r in rs) for n, rs in runs.items()}
    load = os.getloadavg()[0]
    print(f"\nbundle {args.bundle.name}; {len(COMMANDS)} commands, greedy, {args.rounds} rounds; this host, "
          f"{os.cpu_count()} cores, load average {load:.1f}")  # fmt: skip
    print(f"grammar vocabulary built once: {vocab_s * 1000:.0f} ms (at serve start)")
    print(f"parse + validate: {valid}/{len(COMMANDS)} (goal: all)   right: {right}/{len(COMMANDS)}")
    per_token = TimedConstraint.spent / max(TimedConstraint.steps, 1) * 1000
    print(f"grammar's own time per token (mask + advance): {per_token:.2f} ms, against {1000 / rate['free']:.1f} ms a "
          "free decode step: alone it would cost " + f"{1 / (1 + per_token * rate['free'] / 1000):.2f}x")  # fmt: skip
    ratio = rate["constrained"] / rate["free"]
    print(f"decode tok/s: free {rate['free']:.1f}, constrained {rate['constrained']:.1f} = {ratio:.2f}x (goal >= 0.9x)")
    delta = ttft["constrained"] - ttft["free"]
    print(
        f"TTFT median: free {ttft['free']:.1f} ms, constrained {ttft['constrained']:.1f} ms = {delta:+.1f} ms (goal <= +20 ms)"
    )
    return 0 if valid == len(COMMANDS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
