"""The dbt docs site: ``dbt docs generate --static`` over a loaded warehouse renders a
mart's page, the data contract and the lineage graph in headless Chromium (Debian's,
``make chromium``)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from loaders.runners import pipeline
from tests.support import TOKEN
from tests.support.warehouse import dbt_invoke

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MART = "product_sales_daily"
MART_DESCRIPTION = "Sales per day × product line × region × channel"

# node colours of dbt docs' lineage graph (cytoscape on a canvas)
GRAPH_COLOURS = {"model": (0, 148, 179), "source": (95, 184, 37), "exposure": (255, 105, 75)}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"),
        reason="no chromium: run `make chromium` (the test always runs when CI is set)",
    ),
]


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Load ``url`` in headless Chromium, let its scripts run, return stdout."""
    proc = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000",
            *args, url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    return proc.stdout


def rendered(dom: str) -> str:
    """The page as rendered, without the scripts (the static page embeds the manifest)."""
    return re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)


def graph_pixels(tmp_path: Path, screenshot: Path) -> dict[str, int]:
    """Pixels of each node colour in ``screenshot``, counted by Chromium on a canvas."""
    png = base64.b64encode(screenshot.read_bytes()).decode()
    harness = tmp_path / "count_pixels.html"
    harness.write_text(
        f"""<!doctype html><pre id="counts">pending</pre>
<img id="shot" src="data:image/png;base64,{png}">
<script>
const colours = {json.dumps(GRAPH_COLOURS)};
const img = document.getElementById("shot");
img.onload = () => {{
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const counts = Object.fromEntries(Object.keys(colours).map(k => [k, 0]));
  for (let i = 0; i < px.length; i += 4) {{
    for (const [kind, [r, g, b]] of Object.entries(colours)) {{
      if (Math.abs(px[i] - r) + Math.abs(px[i + 1] - g) + Math.abs(px[i + 2] - b) < 24) {{
        counts[kind]++;
      }}
    }}
  }}
  document.getElementById("counts").textContent = JSON.stringify(counts);
}};
</script>"""
    )
    dom = chromium(tmp_path, harness.as_uri(), "--dump-dom")
    match = re.search(r'<pre id="counts">(.*?)</pre>', dom, flags=re.S)
    assert match and match.group(1) != "pending", "pixel counting did not run"
    return json.loads(match.group(1))


def test_static_docs_site_renders_a_mart_the_contract_and_the_lineage_graph(
    simulator, warehouse, tmp_path
):
    pipeline.load(base_url=simulator.url, token=TOKEN)
    # unit tests are tests/test_dbt_project.py's business; here they would only slow the
    # build (and those of incremental marts need the mart built before they can run)
    dbt_invoke(tmp_path, "build", "--exclude-resource-type", "unit_test")
    dbt_invoke(tmp_path, "docs", "generate", "--static")
    site = tmp_path / "target" / "static_index.html"
    assert site.is_file(), "dbt docs generate --static wrote no static_index.html"

    # (a) the mart's page: its description rendered as markdown, its columns listed
    page = rendered(
        chromium(tmp_path, f"{site.as_uri()}#!/model/model.salesflow.{MART}", "--dump-dom")
    )
    assert MART_DESCRIPTION in page, f"{MART}'s page did not render its description"
    assert "product_sales_daily_id" in page, f"{MART}'s page did not list its columns"
    assert "Contract" in page and "Enforced" in page

    # (b) the data contract with the platform team, on the replica source's page: a table
    # per entity, one row per contracted field with what uses it
    page = rendered(
        chromium(tmp_path, f"{site.as_uri()}#!/source_list/replica", "--dump-dom")
    )
    assert "Data contract with the platform team" in page, "no contract on the source page"
    row = re.search(r"<tr>(?:(?!</tr>).)*?<code>total_cents</code>.*?</tr>", page, flags=re.S)
    assert row, "the contract lists no orders.total_cents"
    assert all(cell in row.group(0) for cell in ("integer", "fct_orders", "customer_retention"))

    # (c) the lineage graph: cytoscape's canvases in the DOM, nodes drawn on them
    graph_url = f"{site.as_uri()}#!/overview?g_v=1"
    dom = rendered(chromium(tmp_path, graph_url, "--dump-dom"))
    assert 'data-id="layer2-node"' in dom, "the lineage graph's node canvas is missing"
    screenshot = tmp_path / "lineage.png"
    chromium(tmp_path, graph_url, f"--screenshot={screenshot}", "--window-size=1400,1000")
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000
    pixels = graph_pixels(tmp_path, screenshot)
    # a node label box is about 70 × 10 px: ask for several of each kind
    assert pixels["model"] > 5_000, f"no model nodes drawn: {pixels}"
    assert pixels["source"] > 1_000, f"no source nodes drawn: {pixels}"
    assert pixels["exposure"] > 500, f"no exposure nodes drawn: {pixels}"
