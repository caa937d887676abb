//! The OpenAPI 3.1 document of `/api/v1`, and a small browsable page for it (served by the hub,
//! nothing fetched from elsewhere).

use axum::Json;
use axum::response::Html;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{aas, alarms, backup, demos, games, scenarios, session, stream, twins};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Demolab hub API",
        description = "Digital twins of the machines in the linked demonstration labs: live state, history, alarms and desired properties. Errors are `{\"error\": {\"code\", \"message\"}}` with the stable codes listed per response.",
    ),
    paths(
        document,
        session::login,
        session::logout,
        session::me,
        twins::list_labs,
        twins::list_kinds,
        twins::get_kind,
        twins::list_twins,
        twins::get_twin,
        twins::retire_twin,
        twins::history,
        twins::sparkplug,
        twins::write_desired,
        alarms::list_alarms,
        alarms::get_alarm,
        alarms::acknowledge,
        scenarios::list,
        scenarios::start,
        scenarios::stop,
        stream::websocket,
        stream::server_sent_events,
        aas::list_shells,
        aas::get_shell,
        aas::submodel_refs,
        aas::aasx,
        aas::list_submodels,
        aas::get_submodel,
        aas::submodel_value,
        aas::submodel_elements,
        games::templates,
        games::list,
        games::create,
        games::get,
        games::start,
        games::pause,
        games::resume,
        games::end,
        games::leaderboard,
        games::results_csv,
        backup::backup,
        games::join,
        games::team,
        games::answer,
        games::hint,
        demos::list,
        demos::current,
        demos::start,
        demos::next,
        demos::reset,
        demos::security,
        demos::lines,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "twins", description = "Labs, twins, history and desired properties"),
        (name = "alarms", description = "Alarms and their acknowledgement"),
        (name = "catalogue", description = "Machine kinds"),
        (name = "demo", description = "Simulator scenarios on simulated machines (demo mode)"),
        (name = "streams", description = "Live changes over WebSocket and Server-Sent Events"),
        (name = "auth", description = "Log in for a bearer token"),
        (name = "games", description = "Innovation games: teachers make them from templates, teams join with a code and answer challenges scored against the machines' history"),
        (name = "aas", description = "Asset Administration Shell (AAS v3.0) export of the twins: the read operations of AAS Part 2, identifiers base64url-encoded"),
        (name = "operations", description = "Running the hub: backups"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "catalogue",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

pub(super) async fn docs_page() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::api::routes;

    fn documented() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(openapi()).expect("serialises");
        let mut operations = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
        operations
    }

    #[test]
    fn the_document_describes_exactly_the_api_routes() {
        let routed: BTreeSet<(String, String)> = routes()
            .into_iter()
            .filter(|r| r.documented)
            .map(|r| (r.method.to_string(), r.path.to_owned()))
            .collect();
        assert_eq!(documented(), routed);
    }

    #[test]
    fn every_reference_resolves_and_every_path_parameter_is_declared() {
        let doc = serde_json::to_value(openapi()).expect("serialises");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let schemas = doc["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = reference.split('"').next().expect("quoted");
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {target}"));
            assert!(schemas.contains_key(name), "dangling reference {target}");
        }
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let wanted: BTreeSet<&str> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            for (method, operation) in item.as_object().expect("item") {
                let declared: BTreeSet<&str> = operation["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(declared, wanted, "{method} {path}");
                assert!(
                    operation["responses"]
                        .as_object()
                        .is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
            }
        }
    }
}
