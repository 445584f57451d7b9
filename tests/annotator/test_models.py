"""Models by path or hub id, and the shipped CPU default made once for every run."""


def test_two_first_runs_convert_the_default_model_once(tmp_path, monkeypatch):
    """Two runs that both find no converted SmolLM2: one converts, the other waits for it
    and uses its folder (never replaced under a reader). Threads, each with its own lock
    file description, contend as two processes do."""
    import threading
    import time

    from annotator import models
    from annotator.core.files import replacing

    converted = []

    def convert(out):
        converted.append(out)
        time.sleep(0.3)  # a conversion takes a while: the other run arrives meanwhile
        with replacing(out) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_smollm2", convert)
    found = []
    runs = [threading.Thread(target=lambda: found.append(models.smollm2_folder(tmp_path)))
            for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=30)
    assert len(converted) == 1 and found == [converted[0]] * 2
