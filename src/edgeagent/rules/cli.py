"""``edgeagent rules test|check`` and ``edgeagent alarms``: rules offline, alarms of the running agent.

``alarms`` talks to the running agent's status page like any client: it reads
``/api/status`` (with the API token when one is configured) and acknowledges through
``POST /api/alarms/ack`` as a logged-in user (``--user``; the password is read from the
terminal, or one line of stdin), so the page's login, CSRF and roles apply to it too.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgeagent.errors import ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = "/etc/edgeagent/edgeagent.toml"


def add_rules_parsers(sub: Any) -> None:
    p = sub.add_parser("rules", help="test rules on a recorded trace, or list what they read and write")
    rules = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = rules.add_parser("test", help="replay a trace (ts,device,point,value) through the rules; JSON lines out")
    q.add_argument("--config", required=True, help="site config whose rules to run")
    q.add_argument("--replay", required=True, metavar="TRACE.csv", help="the trace: ts,device,point,value")
    q.set_defaults(func=_cmd_rules_test)
    q = rules.add_parser("check", help="check a site config's rules (or one rule pack) and list each rule")
    q.add_argument("file", help="a site config, or a rule pack file")
    q.set_defaults(func=_cmd_rules_check)

    p = sub.add_parser("alarms", help="list the running agent's alarms, or acknowledge one")
    p.add_argument("--config", help=f"where the status page is, and its API token (default: {DEFAULT_CONFIG})")
    p.add_argument("--url", help="the status page (default: from the config's [web])")
    p.add_argument("--ack", metavar="ID", help="acknowledge this alarm (<source>/<kind>, as listed)")
    p.add_argument("--user", help="log in as this user to acknowledge (technician role)")
    p.add_argument("--all", action="store_true", help="also list cleared alarms")
    p.add_argument("--insecure", action="store_true", help="do not verify the page's TLS certificate")
    p.set_defaults(func=_cmd_alarms)


def _problems(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return EXIT_CONFIG


def _cmd_rules_test(args: argparse.Namespace) -> int:
    from edgeagent.config import load_config, profiles_for
    from edgeagent.rules.bind import bind_rules
    from edgeagent.rules.replay import TraceError, replay_file

    try:
        site = load_config(Path(args.config))
    except ConfigError as exc:
        return _problems(exc)
    rules, _ = bind_rules(site, profiles_for(site))
    try:
        replay_file(rules, Path(args.replay), sys.stdout)
    except OSError as exc:
        print(f"{args.replay}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    except TraceError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def _cmd_rules_check(args: argparse.Namespace) -> int:
    from edgeagent.config import load_config, profiles_for
    from edgeagent.profiles import read_toml
    from edgeagent.rules.bind import bind_rules, check_pack
    from edgeagent.rules.replay import describe, intent_value

    path = Path(args.file)
    try:
        if "gateway" not in read_toml(path):
            pack, problems = check_pack(path)
            if problems:
                raise ConfigError(problems)
            for rule in pack:
                inputs = ", ".join(f"{k} = {v}" for k, v in rule.inputs.items()) or "none"
                writes = [f"{a.write} = {intent_value(a.value)} on {a.on}" for a in rule.actions if a.write]
                print(f"{rule.name} ({rule.severity}): inputs {inputs}; writes {'; '.join(writes) or 'nothing'}")
            print(f"OK: {len(pack)} rules (a pack: bound to devices only by a site config that includes it)")
            return EXIT_OK
        site = load_config(path)
    except ConfigError as exc:
        return _problems(exc)
    rules, _ = bind_rules(site, profiles_for(site))
    for rule in rules:
        print("\n".join(describe(rule)))
    print(f"OK: {len(rules)} rules")
    return EXIT_OK


# -- alarms ----------------------------------------------------------------------------------


def _page_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/") + "/"
    from edgeagent.config import load_config
    from edgeagent.web.tls import wants_tls

    web = load_config(Path(args.config or DEFAULT_CONFIG)).web
    host = "127.0.0.1" if web.host in ("0.0.0.0", "::") else web.host
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if wants_tls(web) else 'http'}://{shown}:{web.port}/"


def _api_token(args: argparse.Namespace) -> str | None:
    """The page's API token, from the config's ``web.api_token_file`` (none with only ``--url``)."""
    if args.url and not args.config:
        return None
    from edgeagent.config import load_config
    from edgeagent.preflight import web_api_token

    return web_api_token(load_config(Path(args.config or DEFAULT_CONFIG)))


def _cmd_alarms(args: argparse.Namespace) -> int:
    try:
        url, token = _page_url(args), _api_token(args)
    except ConfigError as exc:
        return _problems(exc)
    if args.ack and not args.user:
        print("--ack needs --user: acknowledging is done as a logged-in technician", file=sys.stderr)
        return EXIT_CONFIG
    password = None
    if args.ack:
        password = getpass.getpass(f"password for {args.user}: ") if sys.stdin.isatty() else sys.stdin.readline()
    try:
        return asyncio.run(_alarms(args, url, token, (password or "").rstrip("\r\n")))
    except OSError as exc:
        print(f"cannot reach the status page at {url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


async def _alarms(args: argparse.Namespace, url: str, token: str | None, password: str) -> int:
    import aiohttp

    ssl = False if args.insecure else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        if args.ack:
            return await _acknowledge(http, url, args.user, password, args.ack, ssl)
        async with http.get(f"{url}api/status", headers=headers, ssl=ssl) as resp:
            if resp.status != 200:
                print(f"{url}api/status answered {resp.status}: {(await resp.text())[:200]}", file=sys.stderr)
                return EXIT_FAILURE
            status = await resp.json()
    alarms = [a for a in status.get("alarms", []) if args.all or a.get("active")]
    now = time.time()
    for a in alarms:
        since = f"{max(0.0, now - float(a.get('ts') or now)):.0f} s ago"
        acked = f" by {a['acked_by']}" if a.get("acked_by") else ""
        print(f"{a.get('id')}  {a.get('state')}{acked}  {a.get('severity') or '-'}  {since}  {a.get('message')}")
    if not alarms:
        print("no active alarms" if not args.all else "no alarms")
    return EXIT_OK


async def _acknowledge(http: Any, url: str, user: str, password: str, alarm_id: str, ssl: Any) -> int:
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    async with http.get(f"{url}login", ssl=ssl) as resp:
        match = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
    if match is None:
        print(f"{url}login: no login form", file=sys.stderr)
        return EXIT_FAILURE
    form = {"user": user, "password": password, "csrf": match.group(1)}
    headers = {"Origin": origin}
    async with http.post(f"{url}login", data=form, headers=headers, allow_redirects=False, ssl=ssl) as resp:
        if resp.status != 303:
            print(f"login as {user} refused ({resp.status})", file=sys.stderr)
            return EXIT_FAILURE
    async with http.get(f"{url}api/session", ssl=ssl) as resp:
        csrf = (await resp.json())["csrf"]
    source, sep, kind = alarm_id.partition("/")
    if not sep:
        print(f"{alarm_id!r} is not an alarm id (<source>/<kind>, as `edgeagent alarms` lists them)", file=sys.stderr)
        return EXIT_CONFIG
    body = {"source": source, "kind": kind}
    async with http.post(f"{url}api/alarms/ack", json=body, headers={**headers, "X-CSRF-Token": csrf}, ssl=ssl) as resp:
        answer = await resp.json() if resp.content_type == "application/json" else {"result": await resp.text()}
    result = str(answer.get("result") or answer.get("error") or answer)
    print(f"{alarm_id}: {result}")
    return EXIT_OK if resp.status == 200 and result.startswith("ok") else EXIT_FAILURE
