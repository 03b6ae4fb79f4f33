"""The library used from Python: ``select`` from several threads, what the selection cache keeps, cancelling
with an Event or a function, and the selection as JSON for a log.

One tiny zoo per module: two 3D UNets with batch-norm layers (random weights, so their verification signals
differ from image to image) with random prototypes of the bundled encoder, which embeds every image.
"""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bad_inputs as bad
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hnswlib")

from ModelSelectorLib.errors import Cancelled, InputError  # noqa: E402
from ModelSelectorLib.io import Image  # noqa: E402
from ModelSelectorLib.progress import check_cancel  # noqa: E402

MODELS = ("bn-a", "bn-b")
EYE3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class CountingEncoder:
    """The bundled encoder, counting the images it embeds."""

    def __init__(self) -> None:
        from ModelSelectorLib.selection.encoder import default_encoder

        self._encoder = default_encoder()
        self.embedded = 0

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def embed(self, image: Image) -> np.ndarray:
        self.embedded += 1
        return self._encoder.embed(image)


def volume(seed: int, shape: tuple[int, int, int] = (20, 24, 24)) -> Image:
    """A CT-like volume (HU) whose mean and spread depend on ``seed``: each gives other batch-norm statistics."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(-100.0 + 60.0 * seed, 40.0 + 25.0 * seed, shape).astype(np.float32)
    return Image(arr, (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), EYE3)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """A zoo of two tiny batch-norm UNets with prototypes and an (uncalibrated) index."""
    from monai.bundle import ConfigParser

    from ModelSelectorLib.selection.encoder import EMBED_DIM
    from ModelSelectorLib.selection.index import ZooIndex, default_index_dir
    from ModelSelectorLib.selection.prototypes import PrototypeSet, encoder_id, save_prototypes
    from ModelSelectorLib.zoo import ModelCard, Zoo, save_bundle

    root = tmp_path_factory.mktemp("library")
    net_def = {**bad.NETWORK_DEF, "norm": "batch"}
    z = Zoo.create(root / "zoo")
    idx = ZooIndex()
    for i, name in enumerate(MODELS):
        torch.manual_seed(i)
        net = ConfigParser({"net": dict(net_def)}).get_parsed_content("net")
        card = ModelCard.from_dict(bad.card_dict(name))
        z.add(save_bundle(root / "src" / name, card, net_def, net.state_dict()))
        vectors = np.random.default_rng(i).normal(size=(3, EMBED_DIM)).astype(np.float32)
        rows = [{"origin": "exemplar", "source": f"case{k}", "view": 0} for k in range(3)]
        meta = {"encoder": encoder_id(CountingEncoder())}
        save_prototypes(z.get(name), PrototypeSet(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), rows, name,
                                                  "0.1.0", meta))  # fmt: skip
        idx.add_model(z, name)
    idx.save(default_index_dir(z))
    return z.path


def _verify_values(zoo: Path, images: list[Image], threads: int) -> list[dict[str, dict[str, float]]]:
    """``ModelMatch.verify`` per image and model, selecting the images in ``threads`` threads."""
    from ModelSelectorLib.selection.scoring import clear_cache
    from ModelSelectorLib.selection.selector import select

    def verified(image: Image) -> dict[str, dict[str, float]]:
        selection = select(image, zoo=zoo, encoder=CountingEncoder(), top_k=None)
        return {m.name: m.verify for m in selection.models}

    clear_cache()  # every image is verified again, not taken from the cache
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(verified, images))


def test_select_from_two_threads_gives_each_image_its_own_verification(zoo):
    from ModelSelectorLib.selection.scoring import runtime_of
    from ModelSelectorLib.zoo import Zoo

    for name in MODELS:  # a network as slow as a real one: two threads' passes overlap
        runtime_of(Zoo(zoo).get(name)).network.register_forward_pre_hook(lambda _m, _i: time.sleep(0.03))
    images = [volume(seed) for seed in range(6)]
    serial = _verify_values(zoo, images, threads=1)
    assert all(set(v) == set(MODELS) and all(s is not None for s in v.values()) for v in serial)
    kls = [v[MODELS[0]]["kl"] for v in serial]
    assert len(set(kls)) == len(kls)  # each image has its own signals, so a mix-up would show
    for _ in range(2):
        assert _verify_values(zoo, images, threads=2) == serial


def test_a_users_own_predict_in_another_thread_leaves_the_verification_alone(zoo):
    from ModelSelectorLib.selection.scoring import runtime_of
    from ModelSelectorLib.zoo import Zoo

    images = [volume(seed) for seed in range(3)]
    serial = _verify_values(zoo, images, threads=1)
    runtime = runtime_of(Zoo(zoo).get(MODELS[0]))
    stop, passes = threading.Event(), []
    convs = [m for m in runtime.network.modules() if isinstance(m, torch.nn.Conv3d)]
    # layers as slow as a real network's: the user's pass and the verification's interleave layer by layer
    slow = [m.register_forward_hook(lambda *_: time.sleep(0.005)) for m in convs]

    def users_predictions() -> None:
        """The user's own predictions on the very runtime the selector verifies with."""
        while not stop.is_set():
            runtime.predict(volume(9))
            passes.append(1)

    user = threading.Thread(target=users_predictions)
    user.start()
    try:
        while not passes:  # the user's pass runs before and during the verification
            time.sleep(0.01)
        meanwhile = _verify_values(zoo, images, threads=1)
    finally:
        stop.set()
        user.join()
        for h in slow:
            h.remove()
    assert len(passes) > 1
    assert meanwhile == serial


def test_the_selection_cache_keeps_no_voxels_and_still_saves_the_work(zoo):
    from ModelSelectorLib.selection import scoring
    from ModelSelectorLib.selection.scoring import runtime_of
    from ModelSelectorLib.selection.selector import select
    from ModelSelectorLib.zoo import Zoo

    scoring.clear_cache()
    encoder = CountingEncoder()
    runtime = runtime_of(Zoo(zoo).get(MODELS[0]))
    calls = []
    original = runtime.fit_signals
    runtime.fit_signals = lambda image: calls.append(1) or original(image)
    try:
        image = volume(7)
        first = select(image, zoo=zoo, encoder=encoder, top_k=None)
        assert all(ev.image is None for ev in scoring._EVIDENCE.values())
        again = select(image.with_array(image.array.copy()), zoo=zoo, encoder=encoder, top_k=None)
        # the same voxels again: neither embedded nor verified a second time, and the same answer
        assert encoder.embedded == 1 and len(calls) == 1
        assert [m.verify for m in again.models] == [m.verify for m in first.models]
        freed = weakref.ref(image.array)
        del image, first, again
        gc.collect()
        assert freed() is None
    finally:
        del runtime.fit_signals


def test_cached_evidence_lends_each_call_its_image():
    """Calibration drops a scored image's voxels from its evidence: a later call on the same image still has
    them for its verification."""
    from ModelSelectorLib.selection.scoring import clear_cache, evidence

    clear_cache()
    encoder = CountingEncoder()
    image = volume(3)
    ev = evidence(encoder, image)
    assert ev.image is image
    ev.image = None
    again = evidence(encoder, image)
    assert again.image is image and encoder.embedded == 1 and again.verify is ev.verify


def test_the_evidence_cache_stays_bounded_under_threads():
    from ModelSelectorLib.selection import scoring

    scoring.clear_cache()
    encoder = CountingEncoder()
    images = [volume(seed, (4, 8, 8)) for seed in range(40)]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda im: scoring.evidence(encoder, im), images * 3))
    assert len(done) == 120 and len(scoring._EVIDENCE) <= 8
    scoring.clear_cache()


# --- cancelling ------------------------------------------------------------------------------------------------
def test_cancel_takes_an_event_or_a_function_and_refuses_anything_else():
    stop = threading.Event()
    check_cancel(stop)
    stop.set()
    with pytest.raises(Cancelled):
        check_cancel(stop)
    flag = {"stop": False}
    check_cancel(lambda: flag["stop"])
    flag["stop"] = True
    with pytest.raises(Cancelled):
        check_cancel(lambda: flag["stop"])
    check_cancel(None)
    for wrong in (True, "stop", 1):
        with pytest.raises(InputError, match="cancel must be a threading.Event") as err:
            check_cancel(wrong)
        assert "\n" not in str(err.value) and type(wrong).__name__ in str(err.value)


def test_select_is_cancelled_before_a_verification(zoo):
    from ModelSelectorLib.selection.scoring import clear_cache
    from ModelSelectorLib.selection.selector import select

    clear_cache()
    asked = []
    with pytest.raises(Cancelled):
        select(
            volume(4), zoo=zoo, encoder=CountingEncoder(), top_k=None, cancel=lambda: asked.append(1) or True
        )
    assert asked == [1]  # at the first verification: none was run
    stop = threading.Event()
    selection = select(volume(4), zoo=zoo, encoder=CountingEncoder(), top_k=None, cancel=stop)
    assert all(m.verify is not None for m in selection.models)


def test_predict_is_cancelled_by_a_function(zoo):
    from ModelSelectorLib.apply import open_runtime

    runtime = open_runtime(zoo, MODELS[0])
    with pytest.raises(Cancelled):
        runtime.predict(volume(1), cancel=lambda: True)
    assert runtime.predict(volume(1), cancel=lambda: False).value.size == volume(1).size


# --- the selection as JSON -------------------------------------------------------------------------------------
def test_selection_json_keeps_the_warnings_and_settings_when_asked(zoo):
    from ModelSelectorLib.selection.selector import select

    selection = select(volume(2), zoo=zoo, encoder=CountingEncoder(), top_k=None, threshold=0.4)
    plain = selection.to_json_dict()
    assert set(plain) == {"input", "fits", "needs_volume", "fits_once_inverted", "models"}
    full = json.loads(json.dumps(selection.to_json_dict(details=True), allow_nan=False))
    same = json.loads(json.dumps(plain))
    assert {k: full[k] for k in plain if k != "models"} == {k: v for k, v in same.items() if k != "models"}
    assert [{k: m[k] for k in one} for m, one in zip(full["models"], same["models"])] == same["models"]
    assert full["threshold"] == 0.4 and full["calibrated"] is False
    assert (
        any("scores are uncalibrated" in w for w in full["warnings"])
        and full["warnings"] == selection.warnings
    )
    assert full["image_classes"] == [[c, round(float(p), 4)] for c, p in selection.image_classes]
    assert set(full["seconds"]) == {
        "load",
        "embed",
        "score",
    }
    for m, match in zip(full["models"], selection.models):
        assert set(m) - set(plain["models"][0]) == {"similarity", "raw", "verify"}
        assert m["verify"]["kl"] == pytest.approx(match.verify["kl"], abs=1e-4)
        assert m["similarity"] == pytest.approx(match.similarity, abs=1e-4)
