"""The CapabilityStatement (``GET /fhir/metadata``), built from the tables the hub runs on, so
that it says exactly what is supported: each type's interactions and search parameters (from
``hub.search``), the result parameters (``hub.fhir_results``) and ``$everything``."""

from __future__ import annotations

from hub import fhir_results, search

INTERACTIONS = ("read", "vread", "history-instance", "search-type")
EVERYTHING = {"name": "everything",
              "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
              "documentation": "All of the patient's records the caller may see, in one Bundle "
                               "(not paged); takes _summary and _elements"}
HANDLING = ("An unknown or unsupported parameter is refused with 400 (also under Prefer: "
            "handling=strict); under Prefer: handling=lenient a search, _history or $everything "
            "ignores it and lists it in an OperationOutcome entry. Reads answer ETag and "
            "Last-Modified, and 304 to If-None-Match / If-Modified-Since.")


def statement(base: str) -> dict:
    resources = [_resource(t) for t in search.PARAMS] + [_audit(), _subscription()]
    return {
        "resourceType": "CapabilityStatement", "status": "active", "date": "2026-11-25",
        "kind": "instance", "fhirVersion": "4.0.1", "format": ["application/fhir+json"],
        "software": {"name": "yrdhub"},
        "implementation": {"description": "Yangtze River Delta interoperability hub",
                           "url": base},
        "rest": [{"mode": "server", "documentation": HANDLING, "resource": resources,
                  "searchParam": [{"name": name, "type": kind, "documentation": doc}
                                  for name, (kind, doc) in fhir_results.RESULT_PARAMS.items()],
                  "security": {"description": "Bearer tokens per party (hub-interface.md)"}}],
    }


def _resource(res_type: str) -> dict:
    entry = {
        "type": res_type,
        "documentation": f"_sort keys: {', '.join(search.sort_keys(res_type))}",
        "interaction": [{"code": code} for code in INTERACTIONS],
        "versioning": "versioned", "readHistory": True, "updateCreate": False,
        "conditionalRead": "full-support",
        "searchParam": _params(search.params_of(res_type)),
    }
    if res_type == "Patient":
        entry["operation"] = [EVERYTHING]
    return entry


def _audit() -> dict:
    return {"type": "AuditEvent", "documentation": "administrators only; newest first, or "
                                                   "oldest first with _sort=date",
            "interaction": [{"code": "search-type"}],
            "searchParam": _params(search.params_of("AuditEvent"))}


def _subscription() -> dict:
    """rest-hook Subscriptions (hub-interface.md, "Hospitals: notifications"): a hospital's own
    only, while it treats the patient; the list takes no parameter at all."""
    return {"type": "Subscription",
            "documentation": "rest-hook only, criteria <type>?patient=<id> for a type of this "
                             "statement, endpoints registered for the hospital; a hospital sees "
                             "and ends only its own. GET /fhir/Subscription takes no parameter "
                             "(the result parameters above do not apply to it).",
            "interaction": [{"code": code} for code in ("create", "read", "delete", "search-type")],
            "versioning": "no-version", "readHistory": False, "updateCreate": False,
            "searchParam": []}


def _params(params) -> list[dict]:
    return [{"name": p.name, "type": p.kind} for p in params]
