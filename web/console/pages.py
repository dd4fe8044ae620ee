"""The console's HTML: small functions that escape every value they put in a page."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

from vigil.v1 import auth_pb2, collections_pb2, folders_pb2, statistics_pb2

RESOLUTIONS = ("SUCCESS", "DECLINED", "OPERATOR_REQUIRED", "PROCESSING", "FAILED")
ANALYSIS_TYPES = ("LIVENESS", "BIOMETRY", "BLACKLIST", "BEST_SHOT")


def e(value: object) -> str:
    return escape(str(value), quote=True)


def resolution_name(value: int) -> str:
    return folders_pb2.Resolution.Name(value).removeprefix("RESOLUTION_")  # type: ignore[arg-type]


def type_name(value: int) -> str:
    return folders_pb2.AnalysisType.Name(value).removeprefix("ANALYSIS_TYPE_")  # type: ignore[arg-type]


def role_name(value: int) -> str:
    return auth_pb2.Role.Name(value).removeprefix("ROLE_")  # type: ignore[arg-type]


def is_full(who: auth_pb2.Principal) -> bool:
    return who.result_mode == auth_pb2.RESULT_MODE_FULL


def page(title: str, body: str, who: auth_pb2.Principal | None = None, csrf: str = "") -> str:
    nav = ""
    if who is not None:
        nav = (
            '<nav aria-label="Console"><a href="/console/">Folders</a>'
            '<a href="/console/watchlists">Watch-lists</a>'
            '<a href="/console/statistics">Statistics</a>'
            '<a href="/console/admin">Administration</a>'
            f'<span class="who">{e(who.company_name)} · {e(role_name(who.role))} · '
            f"{'FULL' if is_full(who) else 'SAFE'}</span>"
            '<form method="post" action="/console/logout">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            '<button type="submit">Sign out</button></form></nav>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · vigil console</title>"
        '<link rel="stylesheet" href="/console/static/console.css">'
        '<script src="/console/static/console.js" defer></script></head>'
        f'<body><header><strong>vigil console</strong>{nav}</header><main id="main">'
        f"<h1>{e(title)}</h1>{body}</main></body></html>"
    )


def login(csrf: str, error: str = "") -> str:
    alert = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    return page(
        "Sign in",
        f"{alert}"
        '<form method="post" action="/console/login" class="login">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        '<label for="email">Email</label>'
        '<input id="email" name="email" type="email" autocomplete="username" required>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" '
        'autocomplete="current-password" required>'
        '<button type="submit">Sign in</button></form>',
    )


def error(who: auth_pb2.Principal | None, csrf: str, title: str, message: str) -> str:
    return page(title, f'<p class="error" role="alert">{e(message)}</p>', who, csrf)


def _options(values: Iterable[str], chosen: str) -> str:
    items = ['<option value="">any</option>']
    items += [
        f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(v)}</option>'
        for v in values
    ]
    return "".join(items)


def folder_list(
    who: auth_pb2.Principal,
    csrf: str,
    folders: list[folders_pb2.Folder],
    query: dict[str, str],
    next_link: str,
) -> str:
    form = (
        '<form method="get" action="/console/" class="filters" aria-label="Filter folders">'
        '<label for="f-key">Metadata key</label>'
        f'<input id="f-key" name="key" value="{e(query.get("key", "transaction_id"))}">'
        '<label for="f-value">equals</label>'
        f'<input id="f-value" name="value" value="{e(query.get("value", ""))}">'
        '<label for="f-after">Created after</label>'
        '<input id="f-after" name="after" type="datetime-local" '
        f'value="{e(query.get("after", ""))}">'
        '<label for="f-before">Created before</label>'
        '<input id="f-before" name="before" type="datetime-local" '
        f'value="{e(query.get("before", ""))}">'
        '<label for="f-resolution">Resolution</label>'
        f'<select id="f-resolution" name="resolution">'
        f"{_options(RESOLUTIONS, query.get('resolution', ''))}</select>"
        '<label for="f-type">Analysis type</label>'
        '<select id="f-type" name="type">'
        f"{_options(ANALYSIS_TYPES, query.get('type', ''))}</select>"
        '<button type="submit">Search</button></form>'
    )
    rows = []
    for folder in folders:
        types = sorted({type_name(a.type) for a in folder.analyses})
        meta = folder.meta.get("transaction_id", "")
        rows.append(
            f'<tr><td><a href="/console/folders/{e(folder.id)}">{e(folder.id)}</a></td>'
            f"<td>{e(meta)}</td>"
            f"<td>{e(folder.created_at.ToDatetime().strftime('%Y-%m-%d %H:%M:%S'))}</td>"
            f'<td class="res-{e(resolution_name(folder.resolution))}">'
            f"{e(resolution_name(folder.resolution))}</td>"
            f"<td>{e(', '.join(types))}</td><td>{len(folder.media)}</td></tr>"
        )
    table = (
        '<table class="folders"><caption>Folders, newest first</caption>'
        '<thead><tr><th scope="col">Folder</th><th scope="col">Transaction</th>'
        '<th scope="col">Created (UTC)</th><th scope="col">Resolution</th>'
        '<th scope="col">Analyses</th><th scope="col">Media</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">No folder matches.</p>'
    )
    more = f'<p><a rel="next" href="{e(next_link)}">Next page</a></p>' if next_link else ""
    return page("Folders", form + table + more, who, csrf)


def _box(result: folders_pb2.MediaResult) -> str:
    """The face box drawn over the image (an SVG in image pixels, scaled with it)."""
    box = result.face.box
    if not result.HasField("face") or box.width <= 0:
        return ""
    return (
        f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.width:.1f}" '
        f'height="{box.height:.1f}" class="box"/>'
    )


def _chart(result: folders_pb2.MediaResult) -> str:
    """Per-frame liveness as a small inline SVG line chart (x: frame time, y: score 0..1)."""
    frames = list(result.frames)
    if len(frames) < 2:
        return ""
    end = max(f.time_ms for f in frames) or 1.0
    points = " ".join(f"{300 * f.time_ms / end:.1f},{60 - 60 * f.score:.1f}" for f in frames)
    return (
        '<figure class="chart"><svg viewBox="0 -2 300 64" width="300" height="64" role="img" '
        f'aria-label="Liveness per frame, {len(frames)} frames">'
        '<line x1="0" y1="60" x2="300" y2="60" class="axis"/>'
        f'<polyline points="{points}" class="line"/></svg>'
        "<figcaption>Liveness per frame (0–1 over the video)</figcaption></figure>"
    )


def _media(
    who: auth_pb2.Principal, media: folders_pb2.MediaInfo, results: list[folders_pb2.MediaResult]
) -> str:
    src = f"/console/media/{e(media.id)}"
    label = f"{', '.join(media.tags)} ({media.content_type}, {media.size} bytes)"
    if not is_full(who):
        view = '<p class="withheld">The media are not shown at SAFE results.</p>'
    elif media.content_type.startswith("video/"):
        view = f'<video controls preload="metadata" src="{src}" aria-label="{e(label)}"></video>'
    elif media.content_type.startswith("image/"):
        width = max((r.face.box.x + r.face.box.width for r in results), default=0.0)
        boxes = "".join(_box(r) for r in results)
        view = (
            f'<div class="shot"><img src="{src}" alt="{e(label)}">'
            + (
                f'<svg class="overlay" data-media="{e(media.id)}" aria-hidden="true">{boxes}</svg>'
                if boxes and width
                else ""
            )
            + "</div>"
        )
    else:
        view = f'<a href="{src}">Open</a>'
    return (
        f'<figure class="media" id="media-{e(media.id)}">{view}'
        f"<figcaption>{e(label)}</figcaption></figure>"
    )


def _result_row(who: auth_pb2.Principal, result: folders_pb2.MediaResult) -> str:
    cells = f"<td>{e(result.media_id)}</td><td>{e(resolution_name(result.resolution))}</td>"
    if is_full(who):
        cells += f'<td class="score">{result.score:.4f}</td><td>{result.face_count}</td>'
    return f"<tr>{cells}</tr>" + (
        f'<tr><td colspan="4">{_chart(result)}</td></tr>' if is_full(who) and result.frames else ""
    )


def _analysis(who: auth_pb2.Principal, csrf: str, analysis: folders_pb2.Analysis) -> str:
    head = "<th scope='col'>Media</th><th scope='col'>Resolution</th>"
    if is_full(who):
        head += "<th scope='col'>Score</th><th scope='col'>Faces</th>"
    rows = "".join(_result_row(who, r) for r in analysis.results)
    resolve = ""
    if analysis.resolution == folders_pb2.RESOLUTION_OPERATOR_REQUIRED:
        resolve = (
            f'<form method="post" action="/console/analyses/{e(analysis.id)}/resolve" '
            'class="resolve" aria-label="Operator decision">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            f'<input type="hidden" name="folder_id" value="{e(analysis.folder_id)}">'
            f'<label for="d-{e(analysis.id)}">Decision</label>'
            f'<select id="d-{e(analysis.id)}" name="resolution">'
            '<option value="SUCCESS">SUCCESS</option><option value="DECLINED">DECLINED</option>'
            f'</select><label for="c-{e(analysis.id)}">Comment</label>'
            f'<input id="c-{e(analysis.id)}" name="comment" maxlength="1000" required>'
            '<button type="submit">Resolve</button></form>'
        )
    timing = (
        f" · {analysis.processing_ms:.0f} ms" if is_full(who) and analysis.processing_ms else ""
    )
    return (
        f'<section class="analysis" id="analysis-{e(analysis.id)}">'
        f"<h3>{e(type_name(analysis.type))} · "
        f'<span class="res-{e(resolution_name(analysis.resolution))}">'
        f"{e(resolution_name(analysis.resolution))}</span>{e(timing)}</h3>"
        + (f'<p class="error">{e(analysis.error)}</p>' if analysis.error else "")
        + f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{resolve}</section>"
    )


def folder(
    who: auth_pb2.Principal,
    csrf: str,
    found: folders_pb2.Folder,
    audit: list[auth_pb2.AuditEvent] | None,
    notice: str = "",
) -> str:
    results: dict[str, list[folders_pb2.MediaResult]] = {}
    for analysis in found.analyses:
        for result in analysis.results:
            results.setdefault(result.media_id, []).append(result)
    meta = "".join(
        f"<tr><th scope='row'>{e(k)}</th><td>{e(v)}</td></tr>"
        for k, v in sorted(found.meta.items())
    )
    media = "".join(_media(who, m, results.get(m.id, [])) for m in found.media)
    analyses = "".join(_analysis(who, csrf, a) for a in found.analyses)
    if audit is None:
        trail = "<p>The audit log is for account administrators.</p>"
    else:
        ids = {found.id, *(a.id for a in found.analyses), *(m.id for m in found.media)}
        # changes and decisions; each view of the folder is an event too, left to the full log
        reads = ("Get", "List", "Download", "Watch")
        events = [
            a
            for a in audit
            if a.object_id in ids and not a.method.rsplit("/", 1)[-1].startswith(reads)
        ]
        trail = (
            "<table class='audit'><thead><tr><th scope='col'>When (UTC)</th>"
            "<th scope='col'>Who</th><th scope='col'>What</th><th scope='col'>Object</th>"
            "<th scope='col'>Status</th></tr></thead><tbody>"
            + "".join(
                f"<tr><td>{e(a.at.ToDatetime().strftime('%Y-%m-%d %H:%M:%S'))}</td>"
                f"<td>{e(a.actor)}</td><td>{e(a.method.rsplit('/', 1)[-1])}</td>"
                f"<td>{e(a.object_type)} {e(a.object_id)}</td><td>{e(a.status)}</td></tr>"
                for a in events
            )
            + "</tbody></table>"
        )
    body = (
        (f'<p class="notice" role="status">{e(notice)}</p>' if notice else "")
        + f'<p>Resolution: <strong class="res-{e(resolution_name(found.resolution))}">'
        f"{e(resolution_name(found.resolution))}</strong> · created "
        f"{e(found.created_at.ToDatetime().strftime('%Y-%m-%d %H:%M:%S'))} UTC</p>"
        f"<h2>Metadata</h2><table class='meta'>{meta}</table>"
        f"<h2>Media</h2><div class='gallery'>{media}</div>"
        f"<h2>Analyses</h2>{analyses or '<p>No analysis.</p>'}"
        f"<h2>Audit trail</h2>{trail}"
    )
    return page(f"Folder {found.id}", body, who, csrf)


def _stamp(value: object) -> str:
    return value.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")  # type: ignore[attr-defined,no-any-return]


def watchlists(
    who: auth_pb2.Principal, csrf: str, collections: list[collections_pb2.Collection]
) -> str:
    rows = "".join(
        f'<tr><td><a href="/console/watchlists/{e(c.name)}">{e(c.name)}</a></td>'
        f"<td>{c.face_count}</td><td>{e(c.model)} {e(c.model_version)}</td>"
        f"<td>{e(_stamp(c.created_at))}</td></tr>"
        for c in collections
    )
    body = (
        "<table class='collections'><thead><tr><th scope='col'>Watch-list</th>"
        "<th scope='col'>Faces</th><th scope='col'>Model</th><th scope='col'>Created (UTC)</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else '<p class="empty">No watch-list yet.</p>'
    )
    return page("Watch-lists", body, who, csrf)


def _hits(found: collections_pb2.SearchResponse) -> str:
    rows = "".join(
        f"<tr class='{'match' if h.match else 'near'}'><td>{e(h.face.person_label)}</td>"
        f'<td class="similarity">{h.similarity:.4f}</td><td>{h.distance:.4f}</td>'
        f"<td>{'match' if h.match else 'no match'}</td><td>{e(h.face.id)}</td></tr>"
        for h in found.hits
    )
    return (
        f"<section class='hits' aria-label='Search results'><h2>Search results</h2>"
        f"<p>{found.searched} faces searched in {found.search_ms:.1f} ms; a match is a "
        f"distance below {found.threshold:.3f}.</p>"
        "<table><thead><tr><th scope='col'>Person</th><th scope='col'>Similarity</th>"
        "<th scope='col'>Distance</th><th scope='col'>Decision</th><th scope='col'>Face</th>"
        f"</tr></thead><tbody>{rows}</tbody></table></section>"
    )


def watchlist(
    who: auth_pb2.Principal,
    csrf: str,
    name: str,
    faces: list[collections_pb2.CollectionFace],
    found: collections_pb2.SearchResponse | None = None,
    notice: str = "",
) -> str:
    base = f"/console/watchlists/{e(name)}"
    token = f'<input type="hidden" name="csrf" value="{e(csrf)}">'
    people: dict[str, list[collections_pb2.CollectionFace]] = {}
    for face in faces:
        people.setdefault(face.person_label, []).append(face)
    listed = "".join(
        f"<li><strong>{e(label or '(no label)')}</strong><ul>"
        + "".join(
            f"<li>face {e(f.id)} · added {e(_stamp(f.created_at))}"
            f'<form method="post" action="{base}/faces/{e(f.id)}/remove" class="inline">'
            f'{token}<button type="submit" aria-label="Remove face {e(f.id)} of '
            f'{e(label)}">Remove</button></form></li>'
            for f in group
        )
        + "</ul></li>"
        for label, group in sorted(people.items())
    )
    body = (
        (f'<p class="notice" role="status">{e(notice)}</p>' if notice else "")
        + (_hits(found) if found is not None else "")
        + '<div class="columns"><section aria-label="Search a photo"><h2>Search a photo</h2>'
        f'<form method="post" action="{base}/search" enctype="multipart/form-data" '
        f'class="stack">{token}<label for="s-photo">Photo</label>'
        '<input id="s-photo" name="photo" type="file" accept="image/*" required>'
        '<button type="submit">Search</button></form></section>'
        '<section aria-label="Add a person"><h2>Add a person</h2>'
        f'<form method="post" action="{base}/people" enctype="multipart/form-data" '
        f'class="stack">{token}<label for="a-label">Name or reference</label>'
        '<input id="a-label" name="label" maxlength="256" required>'
        '<label for="a-photos">Photos (one face each)</label>'
        '<input id="a-photos" name="photos" type="file" accept="image/*" multiple required>'
        '<button type="submit">Add</button></form></section></div>'
        f"<h2>People ({len(people)}, {len(faces)} faces)</h2>"
        + (f"<ul class='people'>{listed}</ul>" if listed else "<p class='empty'>Empty.</p>")
    )
    return page(f"Watch-list {name}", body, who, csrf)


#: Bar colours of the statistics chart (CSS classes), by resolution.
SHOWN_RESOLUTIONS = ("SUCCESS", "DECLINED", "OPERATOR_REQUIRED", "FAILED", "PROCESSING")


def _day_chart(per_day: dict[str, dict[str, int]]) -> str:
    """Analyses per day as stacked bars by resolution (an inline SVG, 24 px a day)."""
    if not per_day:
        return ""
    top = max(sum(v.values()) for v in per_day.values())
    bars = []
    for i, (day, counts) in enumerate(sorted(per_day.items())):
        y = 120.0
        for resolution in SHOWN_RESOLUTIONS:
            height = 110.0 * counts.get(resolution, 0) / top
            if height:
                y -= height
                bars.append(
                    f'<rect x="{i * 24 + 4}" y="{y:.1f}" width="18" height="{height:.1f}" '
                    f'class="bar-{resolution}"><title>{e(day)} {resolution}: '
                    f"{counts.get(resolution, 0)}</title></rect>"
                )
        bars.append(f'<text x="{i * 24 + 13}" y="134" class="day">{e(day[8:])}</text>')
    width = max(240, 24 * len(per_day) + 8)
    legend = " ".join(
        f'<span class="key bar-{r}" aria-hidden="true"></span>{r}' for r in SHOWN_RESOLUTIONS
    )
    return (
        f'<figure class="days"><svg viewBox="0 0 {width} 140" width="{width}" height="140" '
        f'role="img" aria-label="Analyses per day by resolution, highest day {top}">'
        f"{''.join(bars)}</svg><figcaption>{legend}</figcaption></figure>"
    )


def statistics(
    who: auth_pb2.Principal,
    csrf: str,
    found: statistics_pb2.StatisticsReport,
    query: dict[str, str],
) -> str:
    per_day: dict[str, dict[str, int]] = {}
    rows = []
    for d in found.days:
        resolution = resolution_name(d.resolution)
        per_day.setdefault(d.day, {})
        per_day[d.day][resolution] = per_day[d.day].get(resolution, 0) + d.count
        rows.append(
            f"<tr><td>{e(d.day)}</td><td>{e(type_name(d.type))}</td>"
            f'<td class="res-{e(resolution)}">{e(resolution)}</td><td>{d.count}</td></tr>'
        )
    form = (
        '<form method="get" action="/console/statistics" class="filters" aria-label="Range">'
        '<label for="st-since">Since</label>'
        f'<input id="st-since" name="since" type="date" value="{e(query.get("since", ""))}">'
        '<label for="st-until">Until</label>'
        f'<input id="st-until" name="until" type="date" value="{e(query.get("until", ""))}">'
        '<button type="submit">Show</button></form>'
    )
    figures = (
        '<dl class="figures">'
        f"<div><dt>Analyses</dt><dd id='st-analyses'>{found.analyses}</dd></div>"
        f"<div><dt>Decline rate</dt><dd id='st-decline'>{100 * found.decline_rate:.1f}%</dd>"
        "</div>"
        f"<div><dt>Operator backlog</dt><dd id='st-backlog'>{found.operator_backlog}</dd></div>"
        "<div><dt>Median processing</dt>"
        f"<dd id='st-median'>{found.median_processing_ms:.0f} ms</dd></div></dl>"
    )
    since = found.since.ToDatetime().strftime("%Y-%m-%d %H:%M")
    until = found.until.ToDatetime().strftime("%Y-%m-%d %H:%M")
    table = (
        "<table class='stats'><thead><tr><th scope='col'>Day (UTC)</th><th scope='col'>Type</th>"
        "<th scope='col'>Resolution</th><th scope='col'>Analyses</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    body = (
        form + f"<p>From {e(since)} to {e(until)} UTC.</p>" + figures + _day_chart(per_day) + table
    )
    return page("Statistics", body, who, csrf)
