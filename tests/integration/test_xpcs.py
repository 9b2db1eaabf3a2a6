"""The XPCS analysis as a function task, its data over SFTP end to end.

The controller, the site's agent and a pilot in a local batch job; the
instrument's HDF5 stack of speckle frames sits behind a real ``sshd``. The
agent stages it in, ``tidewater.examples.xpcs:analyse`` runs in the pilot's
warm worker in the task's work directory, and ``g2.h5`` goes back over SFTP.
A stack whose recorded correlation time is not its real one fails its task
with the fit's numbers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import pytest

from tidewater import TaskFailed
from tidewater.examples import xpcs

from .sshd import Sshd
from .test_data import data_site
from .test_data_sftp import keys

pytestmark = [pytest.mark.integration, pytest.mark.sshd, pytest.mark.usefixtures("store")]


async def test_a_stack_staged_in_over_sftp_is_analysed_and_g2_staged_out(
    tmp_path: Path, sshd: Sshd,
) -> None:
    beamline = tmp_path / "beamline"
    beamline.mkdir()
    stack = xpcs.simulate(beamline / "run42.h5", frames=500, size=128, tau=0.08, dt=0.01,
                          seed=42)
    liar = xpcs.simulate(beamline / "run43.h5", frames=300, size=96, tau=0.08, seed=43)
    with h5py.File(liar, "r+") as f:
        f["frames"].attrs["tau"] = 0.16  # it claims twice its real correlation time
    async with data_site(tmp_path, **keys(sshd)) as (_c, client, _work):
        await client.add_app("lab", "xpcs", function="tidewater.examples.xpcs:analyse")
        t = await client.submit(
            "xpcs", site="lab", kwargs={"stack": "stack.h5", "out": "g2.h5"},
            inputs={"stack.h5": sshd.url(stack)},
            outputs={"g2.h5": sshd.url(beamline / "results" / "g2.h5")}, max_retries=0)
        info = await t.result(timeout=120)
        assert info.state == "JOB_FINISHED", info
        got = await t.value()
        bad = await client.submit(
            "xpcs", site="lab", kwargs={"stack": "stack.h5", "out": "g2.h5"},
            inputs={"stack.h5": sshd.url(liar)},
            outputs={"g2.h5": sshd.url(beamline / "results" / "g2-43.h5")}, max_retries=0)
        with pytest.raises(TaskFailed, match=r"ValueError: the fitted correlation time of "
                                             r"stack.h5 is off: .* against 0.16 s simulated"):
            await bad.value()

    assert got["frames"] == 500 and got["size"] == 128 and got["tau_true"] == 0.08
    assert got["rel_error"] <= xpcs.TOLERANCE
    assert got["tau_fit"] == pytest.approx(0.08, rel=xpcs.TOLERANCE)
    assert 0 < got["seconds"] < 60
    back = beamline / "results" / "g2.h5"
    with h5py.File(back) as f:  # the file that came back is the one the fit was made from
        assert f.attrs["tau_fit"] == got["tau_fit"] and f.attrs["tau_true"] == 0.08
        assert f["g2"].shape == (4, 499)
    files = {(f.direction, f.path): f for f in info.files}
    assert files["in", "stack.h5"].sha256 == hashlib.sha256(stack.read_bytes()).hexdigest()
    assert files["out", "g2.h5"].sha256 == hashlib.sha256(back.read_bytes()).hexdigest()
    assert not (beamline / "results" / "g2-43.h5").exists()  # a failed run sends nothing
