"""The README's `openssl ca` CRL recipe ("Serving a CA that publishes CRLs"), run as written with
OpenSSL's own CA (issue 15): `openssl ca -gencrl` publishes a CRL to a directory, ocspd serves it
(`openssl ocsp` verifies "good"), the recipe's `openssl ca -revoke` and the next `-gencrl` make it
"revoked" with the reason, within a second (a CRL file is watched like index.txt, with the
default [crl] settings).

Substituted: /srv/ca and /srv/crl by directories of the test, /etc/ocspd by the test PKI's
directory; the CA's ca.cnf (not part of the recipe: every `openssl ca` CA has its own) is a
minimal one written here."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ocspd import pki
from ocspd.app import CRLS, init_app
from ocspd.config import load_config
from tests.helpers import assert_verified, build_pki, eventually, openssl_ocsp, readme_block

SECTION = "## Serving a CA that publishes CRLs"
CA_CNF = """\
[ca]
default_ca = lab
[lab]
dir = .
database = index.txt
new_certs_dir = certs
certificate = ca.pem
private_key = ca.key
crlnumber = crlnumber
default_md = sha256
policy = any
[any]
commonName = supplied
"""


def _shell(script: str, cwd: Path) -> None:
    result = subprocess.run(["sh", "-e", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_the_readme_openssl_ca_crl_recipe_serves_a_revocation_within_a_second(
    ocspd_server: Any, tmp_path: Path
) -> None:
    test_pki = build_pki(tmp_path / "etc")
    ca_dir, crl_dir = tmp_path / "ca", tmp_path / "crl"
    (ca_dir / "certs").mkdir(parents=True)
    crl_dir.mkdir()
    (ca_dir / "ca.cnf").write_text(CA_CNF)
    (ca_dir / "index.txt").write_text("")
    shutil.copy(test_pki.ca_path, ca_dir / "ca.pem")
    pki.write_key(ca_dir / "ca.key", test_pki.ca.key)
    shutil.copy(test_pki.leaf_paths["revoked"], ca_dir / "certs" / "leaf.pem")
    recipe = readme_block(SECTION, "sh").replace("/srv/ca", str(ca_dir)).replace("/srv/crl", str(crl_dir))
    lines = recipe.splitlines()
    assert lines[0] == f"cd {ca_dir}" and "-revoke" in lines[2] and "-gencrl" in lines[3], recipe
    # The CA publishes its first CRL (the recipe's first two commands, and its last): nothing revoked.
    _shell("\n".join([lines[0], lines[1], lines[3]]), ca_dir)

    issuer = readme_block(SECTION, "toml", after="and in ocspd.toml:")
    issuer = issuer.replace("/srv/crl", str(crl_dir)).replace("/etc/ocspd", str(test_pki.directory))
    issuer = issuer.replace("responder.key", test_pki.key_path.name)
    config_path = tmp_path / "ocspd.toml"
    config_path.write_text('[server]\nlisten = ["127.0.0.1:0"]\n\n' + issuer)  # [crl] as by default
    app = init_app(load_config(config_path, environ={}))
    server = await ocspd_server(app)

    async def in_force(number: int) -> bool:
        base = app[CRLS]["lab-ca"].base
        return base is not None and base.number == number

    await eventually(lambda: in_force(0x1000), timeout=10, what="the first CRL in force")
    url = f"http://127.0.0.1:{server.port}/"
    code, output = await openssl_ocsp(test_pki, url, "revoked", extra=("-no_nonce",))
    assert_verified(code, output, test_pki.leaf_paths["revoked"], "good")

    _shell(recipe, ca_dir)  # the recipe as written: revoke, and publish the next CRL
    await eventually(lambda: in_force(0x1001), timeout=2.5, what="the CRL with the revocation in force")
    await asyncio.sleep(0)
    code, output = await openssl_ocsp(test_pki, url, "revoked", extra=("-no_nonce",))
    assert_verified(code, output, test_pki.leaf_paths["revoked"], "revoked")
    assert "Reason: keyCompromise" in output, output
