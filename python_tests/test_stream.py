"""Video streams: the shared video (72 frames, one face, one track), synthetic sequences made from
the shared photos (a face moving, leaving and coming back, two faces crossing, one passing in front
of the other, a variable frame rate), the iterable and push APIs, smoothing on a still face,
detector scheduling, the second landmark pass on small faces of large photos, and every bad source."""

from __future__ import annotations

import sys
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

import ig3d
from ig3d.io import load_image
from ig3d.stream import FrameResult, Tracker

av = pytest.importorskip("av", reason="video tests need PyAV (pip install 'ig3d[video]')")

from ig3d.video import CorruptFrameWarning, VideoWriter, open_source  # noqa: E402

H, W = 360, 640


@pytest.fixture(scope="module")
def predictor():
    return ig3d.Predictor()


@pytest.fixture(scope="module")
def patches(predictor, faces):
    """Head-and-shoulders patches ~90 px face width cut from two shared photos."""
    out = {}
    for key, name in (("A", "astronaut.png"), ("B", "single_face.jpg")):
        rgb = load_image(faces / name)
        x0, y0, x1, y1 = predictor.predict(rgb)[0].box
        w = x1 - x0
        crop = rgb[int(max(0, y0 - 0.45 * w)):int(y1 + 0.27 * w), int(max(0, x0 - 0.3 * w)):int(x1 + 0.3 * w)]
        s = 90 / w
        out[key] = np.asarray(Image.fromarray(crop).resize((round(crop.shape[1] * s), round(crop.shape[0] * s)),
                                                           Image.BILINEAR))
    return out


def canvas():
    return np.full((H, W, 3), 120, np.uint8)


def put(img, patch, x, y):
    img[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
    return img


def centre(face):
    return (face.box[:2] + face.box[2:]) / 2


def same_faces(a, b):
    """The same faces with the same numbers (push API vs iterator, reset vs fresh)."""
    assert len(a) == len(b)
    for fa, fb in zip(a, b):
        assert fa.track_id == fb.track_id and fa.label == fb.label
        np.testing.assert_array_equal(fa.landmarks, fb.landmarks)
        np.testing.assert_array_equal(fa.box, fb.box)
        assert fa.scores == fb.scores and fa.blendshapes == fb.blendshapes
        assert (fa.valence, fa.arousal) == (fb.valence, fb.arousal)


# -- the shared video -------------------------------------------------------------------------
def test_shared_video_one_face_one_track(predictor, faces):
    with predictor.stream(faces / "single_face.mp4") as s:
        res = list(s)
        assert s.source.frames == 72 and s.source.skipped == []
    assert [r.index for r in res] == list(range(72))
    # 30 frames/s, from the stream's presentation times
    np.testing.assert_allclose([r.timestamp for r in res], np.arange(72) / 30, atol=1e-9)
    assert all(len(r.faces) == 1 for r in res)
    assert {r.faces[0].track_id for r in res} == {0}
    # what a person sees: neutral at the start, smiling from about frame 18 to 69 (the manifest);
    # smoothing delays the change by a frame or two
    labels = [r.faces[0].label for r in res]
    assert set(labels[:16]) == {"neutral"} and set(labels[25:68]) == {"happy"}, labels
    raw = [r.faces[0].label for r in predictor.stream(faces / "single_face.mp4", smoothing=None)]
    assert set(raw[:16]) == {"neutral"} and set(raw[22:67]) == {"happy"} and set(raw[70:]) == {"neutral"}, raw
    d = res[30].to_dict()
    assert d["index"] == 30 and d["faces"][0]["track_id"] == 0 and "landmarks" not in d["faces"][0]


def test_decoded_frames_are_the_files_frames(faces):
    # the background decoder hands over exactly what PyAV decodes, in order, with pts * time_base
    with av.open(str(faces / "single_face.mp4")) as c:
        ref = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    with open_source(faces / "single_face.mp4", buffer=2) as src:
        got = [(fr.timestamp, fr.image) for fr in src]
    assert len(got) == len(ref) == 72
    for (t0, a), (t1, b) in zip(ref, got):
        assert t0 == t1 and np.array_equal(a, b)


def test_stopping_early_stops_the_decoder(predictor, faces):
    s = predictor.stream(faces / "single_face.mp4")
    first = next(s)
    assert first.index == 0 and len(first.faces) == 1
    s.close()
    thread = s.source._thread
    assert thread is not None and not thread.is_alive()
    with pytest.raises(StopIteration):
        next(s)


# -- synthetic sequences ----------------------------------------------------------------------
def test_moving_face_keeps_its_track(predictor, patches):
    A = patches["A"]
    pos = [(20 + 12 * i, 60 + 3 * i) for i in range(36)]
    frames = [put(canvas(), A, x, y) for x, y in pos]
    res = list(predictor.stream(frames, smoothing=None))
    assert all(len(r.faces) == 1 for r in res) and {r.faces[0].track_id for r in res} == {0}
    # the face moves with the patch (12 px per frame in x, 3 in y)
    c = np.array([centre(r.faces[0]) for r in res])
    np.testing.assert_allclose(np.diff(c[:, 0]), 12, atol=1.5)
    np.testing.assert_allclose(np.diff(c[:, 1]), 3, atol=1.5)


def test_face_leaving_and_coming_back_gets_a_new_id(predictor, patches):
    A = patches["A"]
    frames = [put(canvas(), A, 100 + 5 * i, 100) if (i < 10 or i >= 20) else canvas() for i in range(30)]
    res = list(predictor.stream(frames, detect_every=5))
    ids = [[f.track_id for f in r.faces] for r in res]
    assert ids[:10] == [[0]] * 10
    assert ids[10:20] == [[]] * 10                         # frames with no face give []
    assert ids[20:] == [[1]] * 10                          # found on its first frame back (a detection is due)


def test_a_face_that_outruns_its_region_is_found_on_the_same_frame(predictor, patches):
    """A jump of most of a face's width in one frame loses the landmark model's region; the
    detectors run on that frame, and the face keeps its id when it is still inside the region where
    it was looked for (a new one when it jumped further)."""
    A = patches["A"]
    pipe = predictor._pipeline
    calls = []
    real = pipe.detect

    def spy(images):
        calls.append(1)
        return real(images)

    pipe.detect = spy
    try:
        for dx, ids in ((70, [0] * 8), (300, [0] * 5 + [1] * 3)):
            calls.clear()
            frames = [put(canvas(), A, 100 + (dx if i >= 5 else 0), 80) for i in range(8)]
            res = list(predictor.stream(frames, detect_every=50))
            assert [[f.track_id for f in r.faces] for r in res] == [[i] for i in ids], dx
            assert len(calls) == 2                          # the first frame and the frame of the jump
            np.testing.assert_allclose(centre(res[5].faces[0])[0], 100 + dx + A.shape[1] / 2, atol=15)
    finally:
        del pipe.detect


def test_two_faces_crossing_keep_their_ids(predictor, patches):
    A, B = patches["A"], patches["B"]
    frames = [put(put(canvas(), A, 20 + 14 * i, 10), B, 480 - 14 * i, 170) for i in range(34)]
    res = list(predictor.stream(frames))
    upper_id = min(res[0].faces, key=lambda f: centre(f)[1]).track_id
    for i, r in enumerate(res):
        assert len(r.faces) == 2 and {f.track_id for f in r.faces} == {0, 1}, i
        # the id follows the face: the one in the upper row (A) moves right, the other (B) left
        upper, lower = sorted(r.faces, key=lambda f: centre(f)[1])
        assert upper.track_id == upper_id
        np.testing.assert_allclose(centre(upper)[0], 20 + 14 * i + A.shape[1] / 2, atol=15)
        np.testing.assert_allclose(centre(lower)[0], 480 - 14 * i + B.shape[1] / 2, atol=15)


def test_face_passing_in_front_is_never_duplicated(predictor, patches):
    A, B = patches["A"], patches["B"]
    # B behind, A in front, on overlapping rows
    frames = [put(put(canvas(), B, 480 - 14 * i, 120), A, 20 + 14 * i, 60) for i in range(34)]
    res = list(predictor.stream(frames))
    front_ids = set()
    for i, r in enumerate(res):
        boxes = np.stack([f.box for f in r.faces])
        assert len(r.faces) <= 2
        if len(r.faces) == 2:
            assert ig3d.faces.detect.iou_matrix(boxes[:1], boxes[1:])[0, 0] < 0.5, i
        assert len({f.track_id for f in r.faces}) == len(r.faces)
        # the face in front is always found, always with the same id
        x_front = 20 + 14 * i + A.shape[1] / 2
        (front,) = [f for f in r.faces if abs(centre(f)[0] - x_front) < 20]
        front_ids.add(front.track_id)
    assert len(front_ids) == 1


def test_variable_frame_rate(predictor, patches):
    # a face moving at a constant 240 px/s, sampled at uneven times (15 to 60 frames/s)
    rng = np.random.default_rng(0)
    ts = np.cumsum(np.r_[0.5, rng.uniform(1 / 60, 1 / 15, 29)])
    A = patches["A"]
    frames = [(put(canvas(), A, int(round(20 + 240 * (t - ts[0]))), 100), t) for t in ts]
    res = list(predictor.stream(frames))
    assert [r.timestamp for r in res] == list(ts)
    assert {r.faces[0].track_id for r in res} == {0}
    truth = 20 + 240 * (ts - ts[0]) + A.shape[1] / 2
    err = np.array([centre(r.faces[0])[0] for r in res]) - truth
    # smoothing in time, not in frames: the lag stays small whatever the spacing
    assert np.abs(err - err[0]).max() < 6, err


def test_vfr_video_file_timestamps(tmp_path, patches):
    # a variable-frame-rate H.264 file: timestamps are its presentation times
    path = tmp_path / "vfr.mp4"
    ms = np.cumsum([0, 33, 17, 50, 40, 20, 66, 33, 25, 100])
    with VideoWriter(path) as w:
        for i, t in enumerate(ms):
            w.write(put(canvas(), patches["A"], 100 + 10 * i, 100), t / 1000)
    with open_source(path) as src:
        got = [f.timestamp for f in src]
    np.testing.assert_allclose(got, ms / 1000, atol=1e-9)
    # HEVC in Matroska, written with PyAV's own encoder, variable frame rate too
    if "libx265" not in av.codecs_available:
        pytest.skip("this PyAV build has no HEVC encoder")
    with av.open(str(tmp_path / "vfr_hevc.mkv"), "w") as out:
        vs = out.add_stream("libx265", rate=30, options={"x265-params": "log-level=none"})
        vs.width, vs.height, vs.pix_fmt, vs.time_base = W, H, "yuv420p", Fraction(1, 1000)
        vs.codec_context.time_base = Fraction(1, 1000)      # else the encoder rounds to 1/30 s
        for i, t in enumerate(ms):
            fr = av.VideoFrame.from_ndarray(put(canvas(), patches["A"], 100 + 10 * i, 100), format="rgb24")
            fr.pts, fr.time_base = int(t), Fraction(1, 1000)
            for pk in vs.encode(fr):
                out.mux(pk)
        for pk in vs.encode(None):
            out.mux(pk)
    with open_source(tmp_path / "vfr_hevc.mkv") as src:
        got = [(f.timestamp, f.image.shape) for f in src]
    np.testing.assert_allclose([t for t, _ in got], ms / 1000, atol=1e-9)
    assert {shape for _, shape in got} == {(H, W, 3)}


def test_push_api_equals_the_iterator_and_reset_repeats(predictor, patches):
    A, B = patches["A"], patches["B"]
    frames = [put(put(canvas(), A, 20 + 14 * i, 10), B, 480 - 14 * i, 170) for i in range(12)]
    ts = [i / 25 for i in range(12)]
    streamed = list(predictor.stream(list(zip(frames, ts)), max_faces=3, detect_every=4))
    tracker = predictor.tracker(max_faces=3, detect_every=4)
    for r, frame, t in zip(streamed, frames, ts):
        assert isinstance(r, FrameResult)
        same_faces(tracker.update(frame, t), r.faces)
    tracker.reset()
    assert tracker.track_ids == []
    for r, frame, t in zip(streamed, frames, ts):      # ids from 0 again, the same numbers
        same_faces(tracker.update(frame, t), r.faces)
    # bgr frames (OpenCV) with color="bgr" give the same results, both ways
    tracker = predictor.tracker(max_faces=3, detect_every=4, color="bgr")
    same_faces(tracker.update(frames[0][:, :, ::-1].copy(), 0.0), streamed[0].faces)
    bgr = list(predictor.stream([f[:, :, ::-1].copy() for f in frames[:3]], timestamps=ts[:3], color="bgr",
                                max_faces=3, detect_every=4, with_images=True))
    assert streamed[0].image is None                   # frames are handed back only when asked for
    for r, ref in zip(bgr, streamed):
        same_faces(r.faces, ref.faces)
        assert np.array_equal(r.image, frames[r.index])


def test_smoothing_lowers_jitter_on_a_still_face(predictor, faces):
    img = load_image(faces / "astronaut.png")
    rng = np.random.default_rng(0)
    frames = [np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8) for _ in range(30)]
    jitter = {}
    for sm in ("default", None):
        res = list(predictor.stream(frames, smoothing=sm))
        assert {len(r.faces) for r in res} == {1} and {r.faces[0].track_id for r in res} == {0}
        lm = np.stack([r.faces[0].landmarks[:, :2] for r in res[5:]])
        bs = np.stack([list(r.faces[0].blendshapes.values()) for r in res[5:]])
        jitter[sm] = (np.linalg.norm(np.diff(lm, axis=0), axis=-1).mean(), np.abs(np.diff(bs, axis=0)).mean())
    assert jitter["default"][0] < 0.25 * jitter[None][0], jitter       # landmarks (measured ~13x lower)
    assert jitter["default"][1] < 0.25 * jitter[None][1], jitter       # blendshapes follow them


def test_detector_schedule_and_max_faces(predictor, patches):
    A, B = patches["A"], patches["B"]
    frames = [put(put(canvas(), A, 20 + 2 * i, 10), B, 400 - 2 * i, 170) for i in range(25)]
    pipe = predictor._pipeline
    calls = []
    real = pipe.detect

    def spy(images):
        calls.append(len(calls))
        return real(images)

    pipe.detect = spy
    try:
        counted = {}
        for max_faces, every in ((3, 10), (2, 10), (1, 10), (3, 1)):
            calls.clear()
            res = list(predictor.stream(frames, max_faces=max_faces, detect_every=every))
            counted[(max_faces, every)] = len(calls)
            assert all(len(r.faces) == min(2, max_faces) for r in res)
    finally:
        del pipe.detect
    # fewer faces than max_faces: frames 0, 10, 20; all found: the first frame only
    assert counted == {(3, 10): 3, (2, 10): 1, (1, 10): 1, (3, 1): 25}, counted


def test_second_landmark_pass_for_small_faces_in_large_photos(predictor, faces):
    """A face only the full-range detector (whole image or tiles) finds gets a second landmark pass
    on the region from its first landmarks: its landmarks then agree better with those of a tight
    crop of the face run the way the landmark model expects (short-range detector region), and no
    longer depend on where in the photo the face is."""
    from ig3d.faces import landmarks as lmk

    pipe = predictor._pipeline

    def crop_landmarks(img):
        pending, lbs = pipe._start_short([img])
        f = pipe._landmarks([img], pipe._finish_short(pending, lbs))
        return lmk.landmarks_to_image(f.landmarks, f.Minv)

    first, refined, found = {}, {}, 0
    for name in ("astronaut.png", "0-f15-hao-ph.jpg", "0-f1-su-ph.jpg"):
        rgb = load_image(faces / name)
        x0, _, x1, _ = predictor.predict(rgb)[0].box
        for width in (40, 56):
            s = width / (x1 - x0)
            small = np.asarray(Image.fromarray(rgb).resize((round(rgb.shape[1] * s), round(rgb.shape[0] * s)),
                                                           Image.BILINEAR))
            for oy, ox in ((500, 1100), (37, 63), (600, 400)):
                photo = np.full((1080, 1920, 3), 110, np.uint8)
                photo[oy:oy + small.shape[0], ox:ox + small.shape[1]] = small
                (dets, full_only), = pipe.detect([photo])
                first_pass = pipe._landmarks([photo], [dets])
                keep = first_pass.presence >= 0.5
                res = predictor.predict(photo)
                if keep.sum() != 1 or len(res) != 1:
                    continue  # the detector missed this face: nothing to refine
                found += 1
                assert full_only[keep].all()                  # only the full-range detector found it
                lm1 = lmk.landmarks_to_image(first_pass.landmarks, first_pass.Minv)[keep][0]
                (face,) = res
                fw = face.box[2] - face.box[0]
                cx, cy = (face.box[:2] + face.box[2:]) / 2
                cx0, cy0, side = int(cx - 0.8 * fw), int(cy - 0.8 * fw), int(1.6 * fw)
                (ref,) = crop_landmarks(photo[cy0:cy0 + side, cx0:cx0 + side])
                ref = ref[:, :2] + (cx0, cy0)
                first.setdefault((name, width), []).append(np.linalg.norm(lm1[:, :2] - ref, axis=1).mean() / fw)
                refined.setdefault((name, width), []).append(
                    np.linalg.norm(face.landmarks[:, :2] - ref, axis=1).mean() / fw)
    assert found >= 14, found
    e1, e2 = (np.concatenate([v for v in d.values()]) for d in (first, refined))
    assert e2.mean() < e1.mean() and e2.max() < e1.max(), (first, refined)
    # the same face at several places in the photo: the refined landmarks hardly move (measured about
    # 8x less spread than the first pass; mean distance 0.73 % -> 0.50 % of the face width)
    groups = [k for k, v in first.items() if len(v) > 1]
    spread1, spread2 = (np.mean([np.std(d[k]) for k in groups]) for d in (first, refined))
    assert spread2 < 0.5 * spread1, (first, refined)


# -- errors -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_videos(faces, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_videos")
    data = (faces / "single_face.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[:len(data) // 2])         # index (moov) at the end: lost
    # the same video with its index first ("faststart"), cut in half: the first frames decode
    with av.open(str(faces / "single_face.mp4")) as src, av.open(str(d / "fast.mp4"), "w",
                                                                 options={"movflags": "faststart"}) as out:
        vs = src.streams.video[0]
        o = out.add_stream_from_template(vs)
        for pk in src.demux(vs):
            if pk.dts is not None:
                pk.stream = o
                out.mux(pk)
    fast = (d / "fast.mp4").read_bytes()
    (d / "truncated_fast.mp4").write_bytes(fast[:len(fast) // 2])
    corrupt = bytearray(data)
    mid = len(corrupt) // 2
    corrupt[mid:mid + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    (d / "corrupt_middle.mp4").write_bytes(bytes(corrupt))
    (d / "random.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 50000, dtype=np.uint8).tobytes())
    (d / "empty.mp4").write_bytes(b"")
    with av.open(str(d / "audio_only.m4a"), "w") as out:
        a = out.add_stream("aac", rate=16000)
        for i in range(20):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, i * 1024
            for pk in a.encode(fr):
                out.mux(pk)
        for pk in a.encode(None):
            out.mux(pk)
    return d


def test_bad_files(predictor, bad_videos, tmp_path):
    with pytest.raises(FileNotFoundError, match="video not found: .*missing.mp4"):
        predictor.stream(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="truncated.mp4.*not a readable video.*truncated"):
        predictor.stream(bad_videos / "truncated.mp4")
    with pytest.raises(ValueError, match="random.mp4.*not a readable video"):
        predictor.stream(bad_videos / "random.mp4")
    with pytest.raises(ValueError, match="empty.mp4.*empty file"):
        predictor.stream(bad_videos / "empty.mp4")
    with pytest.raises(ValueError, match="audio_only.m4a.*no video stream.*audio"):
        predictor.stream(bad_videos / "audio_only.m4a")
    # cut short with its index first: the frames that are there come out, then the error
    got = []
    with pytest.raises(ValueError, match="truncated_fast.mp4.*truncated"):
        with pytest.warns(CorruptFrameWarning):
            for r in predictor.stream(bad_videos / "truncated_fast.mp4"):
                got.append(r)
    assert 10 < len(got) < 72 and all(len(r.faces) == 1 for r in got)


def test_corrupt_frame_is_skipped_and_reported(bad_videos):
    with pytest.warns(CorruptFrameWarning, match="corrupt_middle.mp4.*frame \\d+ skipped") as w:
        with open_source(bad_videos / "corrupt_middle.mp4") as src:
            idx = [f.index for f in src]
            skipped = src.skipped
    assert len(skipped) == len(w) >= 1
    assert len(idx) + len(skipped) == 72
    assert sorted(idx + [i for i, _ in skipped]) == list(range(72))   # the others keep their positions


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="v4l2 device paths are Linux's")
def test_camera_that_cannot_be_opened(predictor):
    with pytest.raises(RuntimeError, match="camera 57 .*could not be opened"):
        predictor.stream(57)
    with pytest.raises(RuntimeError, match="camera '/dev/video57'.*could not be opened"):
        predictor.stream("/dev/video57")
    with pytest.raises(ValueError, match="camera: expected a non-negative index"):
        predictor.stream(-1)


def test_missing_pyav_extra(predictor, faces, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"pip install \"ig3d\[video\]\""):
        predictor.stream(faces / "single_face.mp4")


def test_bad_frames_timestamps_and_arguments(predictor, patches):
    frame = put(canvas(), patches["A"], 100, 100)
    with pytest.raises(ValueError, match="frame 2: timestamps must increase, got 0.1 s after 0.2 s"):
        list(predictor.stream([(frame, 0.0), (frame, 0.2), (frame, 0.1)]))
    with pytest.raises(ValueError, match="frame 1: .*unsupported dtype"):
        list(predictor.stream([frame, frame.astype(np.int16)]))
    with pytest.raises(ValueError, match="one image, not a sequence of frames"):
        predictor.stream(frame)
    with pytest.raises(ValueError, match="timestamps: 1 timestamps for 2 frames"):
        predictor.stream([frame, frame], timestamps=[0.0])
    tracker = predictor.tracker()
    tracker.update(frame, 1.0)
    with pytest.raises(ValueError, match="frame 1: timestamps must increase, got 1.0 s after 1.0 s"):
        tracker.update(frame, 1.0)
    with pytest.raises(ValueError, match="frame 1: the timestamp must be finite"):
        tracker.update(frame, float("nan"))
    for kw, msg in (({"max_faces": 0}, "max_faces"), ({"detect_every": 0}, "detect_every"),
                    ({"smoothing": "heavy"}, "smoothing"), ({"color": "hsv"}, "color"), ({"fps": -1}, "fps")):
        with pytest.raises(ValueError, match=msg):
            predictor.tracker(**kw)
    assert isinstance(tracker, Tracker)


def test_closed_predictor():
    with ig3d.Predictor() as p:
        assert p.predict(np.zeros((64, 64, 3), np.uint8)) == []
    with pytest.raises(RuntimeError, match="closed"):
        p.predict(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(RuntimeError, match="closed"):
        p.tracker()


def test_iterables_without_timestamps(predictor, patches):
    frame = put(canvas(), patches["A"], 100, 100)
    res = list(predictor.stream(iter([frame] * 3), fps=25))
    assert [r.timestamp for r in res] == [0.0, 0.04, 0.08]
    res = list(predictor.stream(np.stack([frame] * 3)))                # a [T, H, W, 3] array
    assert [r.timestamp for r in res] == [0.0, 1 / 30, 2 / 30] and all(len(r.faces) == 1 for r in res)


# -- the command line -------------------------------------------------------------------------
def _ig3d(*args, cwd, stderr=None):
    import subprocess

    return subprocess.run([sys.executable, "-m", "ig3d", *args], cwd=cwd, capture_output=stderr is None,
                          stdout=None if stderr is None else subprocess.PIPE, stderr=stderr, text=True, timeout=600)


def test_cli_video_json_lines_and_overlay(faces, tmp_path):
    import json

    video = str(faces / "single_face.mp4")
    r = _ig3d("predict", video, "--json", "--overlay", "out.mp4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["index"] for o in rows] == list(range(72))
    assert set(rows[0]) == {"video", "index", "timestamp", "faces"} and rows[0]["video"] == video
    assert rows[3]["timestamp"] == pytest.approx(0.1)
    assert all(len(o["faces"]) == 1 and o["faces"][0]["track_id"] == 0 for o in rows)
    # the annotated video: every frame, same size and times, with drawings on it
    with av.open(str(tmp_path / "out.mp4")) as out, av.open(video) as src:
        drawn = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in out.decode(video=0)]
        orig = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    assert len(drawn) == 72 and drawn[0][1].shape == orig[0].shape
    np.testing.assert_allclose([t for t, _ in drawn], np.arange(72) / 30, atol=1e-3)
    diff = np.abs(drawn[40][1].astype(int) - orig[40]).mean(axis=2)
    x0, y0, x1, y1 = (int(v) for v in rows[40]["faces"][0]["box"])
    assert diff[y0 - 2:y0 + 3, x0 + 10:x1 - 10].mean() > 40     # the box's top edge is drawn
    assert np.median(diff[:, :60]) < 8                            # the rest is the video (H.264 loss only)


def test_cli_video_errors_and_progress(faces, bad_videos, tmp_path):
    import os
    import pty

    r = _ig3d("predict", str(bad_videos / "random.mp4"), str(faces / "astronaut.png"), cwd=tmp_path)
    assert r.returncode == 1 and "not a readable video" in r.stderr and "astronaut.png: 1 face" in r.stdout
    r = _ig3d("predict", str(bad_videos / "corrupt_middle.mp4"), "--json", cwd=tmp_path)
    assert r.returncode == 0 and "skipped" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stdout.splitlines()) == 72 - r.stderr.count("skipped")
    r = _ig3d("predict", str(faces / "single_face.mp4"), "--overlay", "out.png", cwd=tmp_path)
    assert r.returncode == 2 and "a video's overlay is a video file" in r.stderr
    if sys.platform.startswith("linux"):
        r = _ig3d("predict", "--camera", "57", cwd=tmp_path)
        assert r.returncode == 1 and "camera 57" in r.stderr and "could not be opened" in r.stderr
    # a terminal gets a progress line with frames/s
    master, slave = pty.openpty()
    try:
        r = _ig3d("predict", str(faces / "single_face.mp4"), "--json", cwd=tmp_path, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 72
    assert b"72/72 frames (100 %)" in seen and b"frames/s" in seen


def test_ig3d_preset_streams_the_default_pipelines_tracked_faces(predictor, faces, tmp_path):
    """An Ig3D preset (synthetic SMIRK + DDAMFN++ + head) reads the faces the default pipeline tracks:
    the same landmarks and track ids, its own encoders and late fusion on top."""
    torch = pytest.importorskip("torch", reason="building synthetic encoders needs torch")
    pytest.importorskip("onnx", reason="ONNX export needs onnx")
    from conftest import one_torch_thread

    from ig3d.convert.ddamfn import export_ddamfn_onnx
    from ig3d.convert.smirk import export_smirk_onnx
    from ig3d.labels import AFFECTNET8_LABELS
    from ig3d.models.ddamfn import DDAMNet
    from ig3d.models.smirk import SmirkEncoder

    torch.manual_seed(0)
    with one_torch_thread():
        export_smirk_onnx(SmirkEncoder().eval(), tmp_path / "smirk.onnx")
        export_ddamfn_onnx(DDAMNet(num_classes=8).eval(), tmp_path / "ddamfn.onnx")
    rng = np.random.default_rng(0)
    head = ig3d.FusedHead([ig3d.Layer(rng.normal(size=(10, 358)) / 20, rng.normal(size=10) * 0.1)], input_dim=358,
                          num_classes=8, va_index=8, fusion="weighted", scores2d_dim=8, fusion_weights=(0.77, 0.23),
                          labels=AFFECTNET8_LABELS)
    p = ig3d.Predictor("ig3d-smirk-ddamfn", weights={"smirk": tmp_path / "smirk.onnx",
                                                     "ddamfn": tmp_path / "ddamfn.onnx", "head": head})
    with av.open(str(faces / "single_face.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(5), c.decode(video=0))]
    got = list(p.stream(frames, smoothing=None))
    ref = list(predictor.stream(frames, smoothing=None))
    for g, r in zip(got, ref):
        (fg,), (fr,) = g.faces, r.faces
        assert fg.track_id == fr.track_id == 0
        np.testing.assert_array_equal(fg.landmarks, fr.landmarks)
        assert fg.params3d.shape == (358,) and fg.flame["expression_params"].shape == (50,)
        z = 0.77 * fg.logits_2d + 0.23 * fg.logits_3d
        np.testing.assert_allclose(list(fg.scores.values()), np.exp(z - z.max()) / np.exp(z - z.max()).sum(),
                                   atol=1e-5)
