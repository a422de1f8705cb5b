from __future__ import annotations

import pytest

from raybeam import Image, InvalidArguments, InvalidConfiguration, task_queue
from raybeam.options import check_options
from raybeam.queue import bind_arguments, signature_params
from raybeam.resources import gpu_types, memory_bytes, pick_gpu_type, ray_options

MiB = 2**20


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (128, 128 * MiB),
        (0.5, MiB // 2),
        ("512Mi", 512 * MiB),
        ("2Gi", 2 * 2**30),
        ("1G", 10**9),
        ("300M", 300 * 10**6),
        ("64", 64 * MiB),
    ],
)
def test_memory_in_bytes(given: int | str, expected: int) -> None:
    assert memory_bytes(given) == expected


@pytest.mark.parametrize("bad", ["lots", "-1Gi", 0, -5, "2 Gigs", True])
def test_memory_refuses_what_it_cannot_read(bad: object) -> None:
    with pytest.raises(InvalidConfiguration):
        memory_bytes(bad)  # type: ignore[arg-type]


def test_cpu_queue_options() -> None:
    assert ray_options(cpu=2, memory="1Gi") == {"num_cpus": 2.0, "memory": 2**30, "num_gpus": 0}


def test_gpu_type_sets_one_gpu_and_image_sets_runtime_env() -> None:
    opts = ray_options(gpu="a10g", image=Image(python_packages=["numpy"], env_vars={"A": 1}))  # type: ignore[dict-item]
    assert opts["num_gpus"] == 1
    assert opts["runtime_env"] == {"pip": ["numpy"], "env_vars": {"A": "1"}}
    assert ray_options(gpu=["H100", "A100"], gpu_count=2)["num_gpus"] == 2


def test_gpu_types_normalise_names_and_keep_order() -> None:
    assert gpu_types(["h100", "A10G", "any"]) == ["H100", "A10G", "any"]
    assert gpu_types(None) == []
    with pytest.raises(InvalidConfiguration):
        gpu_types([])


def test_pick_gpu_type_takes_the_first_type_a_node_has() -> None:
    cluster = {"GPU": 2.0, "accelerator_type:A10G": 1.0, "accelerator_type:T4": 1.0}
    assert pick_gpu_type(["H100", "T4", "A10G"], cluster) == "T4"
    assert pick_gpu_type(["H100"], cluster) == "H100"  # stays pending until one exists
    assert pick_gpu_type(["any"], cluster) is None
    assert pick_gpu_type(["H100", "any"], cluster) is None


def test_decorator_validates_parameters() -> None:
    def f() -> None: ...

    with pytest.raises(InvalidConfiguration, match="retries"):
        task_queue(retries=-1)(f)
    with pytest.raises(InvalidConfiguration, match="memory"):
        task_queue(memory="huge")(f)
    with pytest.raises(InvalidConfiguration, match="retry_for"):
        task_queue(retry_for=[42])(f)  # type: ignore[list-item]
    with pytest.raises(InvalidConfiguration, match="queue name"):
        task_queue(name="a b")(f)


def test_plain_call_runs_locally_without_ray() -> None:
    @task_queue(cpu=1)
    def add(x: int, y: int = 1) -> int:
        return x + y

    assert add(2, y=3) == 5
    assert add.name == "add"


def test_options_override_per_call_and_leave_the_queue_alone() -> None:
    @task_queue(timeout=100)
    def f(x: int) -> int:
        return x

    g = f.options(timeout=5, callback_url="https://93.184.216.34/hook")
    assert g._overrides == {"timeout": 5, "callback_url": "https://93.184.216.34/hook"}
    assert f._overrides == {}
    with pytest.raises(InvalidConfiguration, match="unknown option"):
        f.options(cpu=3)
    with pytest.raises(InvalidConfiguration):
        check_options({"timeout": 0})


def test_arguments_must_bind_to_the_signature() -> None:
    def handler(x: int, *, scale: float = 1.0, context: object = None) -> None: ...

    params = signature_params(handler)
    assert [p[0] for p in params] == ["x", "scale"]
    bind_arguments(params, [1], {"scale": 2})
    bind_arguments(params, [], {"x": 1})
    with pytest.raises(InvalidArguments, match="missing a required argument"):
        bind_arguments(params, [], {})
    with pytest.raises(InvalidArguments):
        bind_arguments(params, [1], {"nope": 2})
    with pytest.raises(InvalidArguments):
        bind_arguments(params, [1, 2], {})
