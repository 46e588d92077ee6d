r"""Job `check_data`: validate a user's dataset download before hours of building and training.

  python -m handobj_jax.main --config=configs/handobj_pose.py:ho3d --config.job=check_data \
      --config.data.manual_dir=/data/HO3D_v2 --config.mano.model_path=/data/mano/MANO_RIGHT.pkl --workdir=DIR

HO-3D (`tfds_ho3d.check_download`): both frame lists, every listed file, a sample of frames read in full, the
object models and the MANO file, without building anything. Other datasets are opened (built on first use, which
validates every file) and their split sizes listed. Prints a table and writes `<workdir>/check_data.md`; exits
with an error line when a check fails.
"""

from __future__ import annotations

import os
from typing import Any

from handobj_jax import console
from handobj_jax import fileio
from handobj_jax import jobs
from input_pipeline import datasets
from input_pipeline import pipeline


def _table(rows: list[tuple[str, str, bool]]) -> str:
  lines = ["| check | finding | ok |", "|---|---|---|"]
  lines += [f"| {c} | {f.replace('|', '/')} | {'yes' if ok else 'NO'} |" for c, f, ok in rows]
  return "\n".join(lines) + "\n"


def run(config, workdir: str) -> dict[str, Any]:
  data = config.data
  mano_path = config.get("mano", {}).get("model_path", "") or None
  if data.name == "ho3d":
    from input_pipeline import tfds_ho3d  # pylint: disable=g-import-not-at-top
    rows = tfds_ho3d.check_download(data.manual_dir, data.builder_config, data.get("models_dir", ""), mano_path,
                                    int(data.get("check_sample", 200)))
    try:
      datasets.check_mano_for(data.name, mano_path)
    except pipeline.DataError as e:
      rows.append(("config.mano.model_path", str(e), False))
  else:
    try:
      builder = datasets.get_builder(data, mano_path)
      rows = [(f"split {s}", f"{builder.info.splits[s].num_examples} examples", True) for s in builder.info.splits]
    except pipeline.DataError as e:
      rows = [(data.name, str(e), False)]
  text = f"# check_data: {data.name} at {data.manual_dir or data.data_dir or 'the default data dir'}\n\n" + _table(rows)
  path = fileio.write_text_atomic(os.path.join(workdir, "check_data.md"), text)
  console.say(text.rstrip())
  failed = [c for c, _, ok in rows if not ok]
  if failed:
    raise jobs.JobInputError(f"{len(failed)} check(s) failed ({', '.join(failed)}); see the table above and {path}")
  console.say(f"all {len(rows)} checks passed; wrote {path}")
  return {"rows": rows, "path": path}
