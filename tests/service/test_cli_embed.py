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
