"""`segany embed`: containers written locally and through a server carry the same id and the same tensor."""

from __future__ import annotations

import numpy as np
import torch

from segany.cli.main import main
from segany.container import decode_container
from tests.service.conftest import png_bytes, random_image


def test_embed_locally_and_through_the_server(server, tiny_model, tmp_path, capsys):
    checkpoint = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), checkpoint)
    good = tmp_path / "photo.png"
    good.write_bytes(png_bytes(random_image(30, 40, seed=41)))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")

    code = main(["embed", str(good), str(bad), "--out", str(tmp_path / "local"), "--checkpoint", str(checkpoint),
                 "--dtype", "float16", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 1  # one image skipped
    assert "skipping" in err and "broken.png" in err and "cannot identify the image format" in err
    local_id = out.split("id=")[1].split()[0]
    local = decode_container((tmp_path / "local" / "photo.emb").read_bytes())
    assert local.stored_dtype == "float16" and local.original_size == (30, 40)

    code = main(["embed", str(good), "--out", str(tmp_path / "remote"), "--server", server.address])
    out, _ = capsys.readouterr()
    assert code == 0 and f"id={local_id} 30x40" in out
    remote = decode_container((tmp_path / "remote" / "photo.emb").read_bytes())
    assert remote.stored_dtype == "float32" and remote.model_fingerprint == local.model_fingerprint
    np.testing.assert_allclose(remote.array, local.array, atol=2e-2, rtol=2e-2)


def test_embed_refuses_what_it_cannot_write_in_one_line(tiny_model, tmp_path, capsys):
    checkpoint = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), checkpoint)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(png_bytes(random_image(20, 20, seed=len(folder))))
    (tmp_path / "a_file").write_text("")
    base = ["embed", "--checkpoint", str(checkpoint)]
    for extra, message in [
        ([str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "--out", str(tmp_path / "o")],
         "would both be written to x.emb"),
        ([str(tmp_path / "a" / "x.png"), "--out", str(tmp_path / "a_file")], "cannot use --out"),
        ([str(tmp_path / "a" / "x.png"), "--out", str(tmp_path / "o"), "--threads", "-1"], "--threads must be >= 1"),
    ]:
        code = main([*base, *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "o").exists()  # refused before anything was written
