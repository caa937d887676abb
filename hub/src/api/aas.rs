//! The AAS read operations of Part 2 (IDTA-01002-3-0) over live twins: shells, their submodel
//! references, submodels, their elements and `$value`, and an `.aasx` per shell. Identifiers
//! in paths are base64url-encoded; lists are paged with `limit` and an opaque `cursor`. Access
//! is that of the twin routes: a shell or submodel of a lab the caller may not read is refused
//! (`403`, or `401` without a token) and left out of every list.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64ct::{Base64UrlUnpadded, Encoding};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::aas::{self, Part, model};
use crate::catalogue::MachineKind;
use crate::twin::{Twin, TwinKey};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Paging of a list (AAS Part 2).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// Where to go on: the `paging_metadata.cursor` of the previous page.
    pub cursor: Option<String>,
    /// `deep` or `core` (accepted for Part 2 clients; the answer is always `deep`).
    pub level: Option<String>,
    /// `withBlobValue` or `withoutBlobValue` (accepted; there are no blobs to leave out).
    pub extent: Option<String>,
}

/// Paging and filters of the submodel list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct SubmodelQuery {
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// Where to go on: the `paging_metadata.cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only submodels with this semantic id (base64url-encoded).
    pub semantic_id: Option<String>,
    /// Only submodels with this idShort (`Nameplate`, `TechnicalData`, ...).
    pub id_short: Option<String>,
    /// `deep` or `core` (accepted for Part 2 clients; the answer is always `deep`).
    pub level: Option<String>,
    /// `withBlobValue` or `withoutBlobValue` (accepted; there are no blobs to leave out).
    pub extent: Option<String>,
}

/// A page of a list.
#[derive(Debug, Serialize)]
pub struct Paged<T> {
    /// Where the next page starts; absent on the last page.
    pub paging_metadata: PagingMetadata,
    /// The items.
    pub result: Vec<T>,
}

/// `paging_metadata` of a page.
#[derive(Debug, Serialize)]
pub struct PagingMetadata {
    /// Pass as `cursor` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One page of `items` (sorted by `key`): those from the cursor on, at most `limit`. The
/// cursor is the key of the first item of the next page, so a list that changes between pages
/// neither repeats nor skips what stayed.
fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    limit: Option<usize>,
    cursor: Option<&str>,
) -> Result<Paged<T>, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadQuery(format!(
            "limit must be 1 to {MAX_LIMIT}, not {limit}"
        )));
    }
    let from = cursor
        .map(|c| {
            Base64UrlUnpadded::decode_vec(c)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    ApiError::BadQuery(format!(
                        "cursor {:?} is not one this API gave: pass paging_metadata.cursor unchanged",
                        c.chars().take(96).collect::<String>()
                    ))
                })
        })
        .transpose()?;
    let mut rest = items
        .into_iter()
        .filter(|item| from.as_ref().is_none_or(|from| key(item) >= *from));
    let result: Vec<T> = rest.by_ref().take(limit).collect();
    let cursor = rest
        .next()
        .map(|next| Base64UrlUnpadded::encode_string(key(&next).as_bytes()));
    Ok(Paged {
        paging_metadata: PagingMetadata { cursor },
        result,
    })
}

/// Part 2 modifiers: known values are accepted (every answer is `deep`, and there are no
/// blobs), anything else is refused rather than silently ignored.
fn check_modifiers(level: Option<&str>, extent: Option<&str>) -> Result<(), ApiError> {
    if let Some(level) = level.filter(|l| !matches!(*l, "deep" | "core")) {
        return Err(ApiError::BadQuery(format!(
            "level must be deep or core, not {level:?}"
        )));
    }
    if let Some(extent) = extent.filter(|e| !matches!(*e, "withBlobValue" | "withoutBlobValue")) {
        return Err(ApiError::BadQuery(format!(
            "extent must be withBlobValue or withoutBlobValue, not {extent:?}"
        )));
    }
    Ok(())
}

/// One page of `items` in their own order (a shell's submodels, a submodel's elements): the
/// cursor is a position, as the order carries meaning and is not that of a key.
fn page_in_order<T>(
    items: Vec<T>,
    limit: Option<usize>,
    cursor: Option<&str>,
) -> Result<Paged<T>, ApiError> {
    let numbered: Vec<(String, T)> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| (format!("{i:06}"), item))
        .collect();
    let page = page(numbered, |(i, _)| i.clone(), limit, cursor)?;
    Ok(Paged {
        paging_metadata: page.paging_metadata,
        result: page.result.into_iter().map(|(_, item)| item).collect(),
    })
}

/// The twins the caller may read, with their kinds, sorted by shell id.
fn readable(state: &AppState, caller: &Caller) -> Vec<(TwinKey, Twin, Arc<MachineKind>)> {
    let mut twins: Vec<_> = state
        .twins
        .list(None)
        .into_iter()
        .filter_map(|twin| {
            let key = TwinKey::parse(&twin.id)?;
            caller.0.can_read(&key.lab).then_some(())?;
            let kind = state.twins.kind(&key)?;
            Some((key, twin, kind))
        })
        .collect();
    twins.sort_by_key(|(key, _, _)| aas::shell_id(key));
    twins
}

/// The twin behind an identifier, if the caller may read its lab.
fn twin_of(
    state: &AppState,
    caller: &Caller,
    key: &TwinKey,
    missing: impl Fn() -> ApiError,
) -> Result<(Twin, Arc<MachineKind>), ApiError> {
    caller.require_lab(&key.lab)?;
    let twin = state.twins.get(key).ok_or_else(&missing)?;
    let kind = state.twins.kind(key).ok_or_else(missing)?;
    Ok((twin, kind))
}

fn shell_target(
    state: &AppState,
    caller: &Caller,
    encoded: &str,
) -> Result<(TwinKey, Twin, Arc<MachineKind>), ApiError> {
    let id = aas::decode_identifier("aasIdentifier", encoded)
        .map_err(|e| ApiError::BadIdentifier(e.to_string()))?;
    let missing = || ApiError::ShellNotFound(id.clone());
    let key = aas::parse_shell_id(&id).ok_or_else(missing)?;
    let (twin, kind) = twin_of(state, caller, &key, missing)?;
    Ok((key, twin, kind))
}

fn submodel_target(
    state: &AppState,
    caller: &Caller,
    encoded: &str,
) -> Result<model::Submodel, ApiError> {
    let id = aas::decode_identifier("submodelIdentifier", encoded)
        .map_err(|e| ApiError::BadIdentifier(e.to_string()))?;
    let missing = || ApiError::SubmodelNotFound(id.clone());
    let (key, part) = aas::parse_submodel_id(&id).ok_or_else(missing)?;
    let (twin, kind) = twin_of(state, caller, &key, missing)?;
    Ok(aas::submodel(&twin, &key, &kind, part))
}

const AAS_ID: &str = "The shell's identifier, base64url-encoded (AAS Part 2), e.g. `dXJuOmRlbW9sYWI6YWFzOmxhYi1hOm1pbGwtMQ` for `urn:demolab:aas:lab-a:mill-1`";
const SUBMODEL_ID: &str = "The submodel's identifier, base64url-encoded (AAS Part 2)";

/// The shells of the twins the caller may read (AAS v3.0 JSON, one per twin).
#[utoipa::path(get, path = "/api/v1/aas/shells", tag = "aas",
    params(Paging),
    responses(
        (status = 200, description = "`{\"paging_metadata\": {\"cursor\"?}, \"result\": [AssetAdministrationShell]}`", content_type = "application/json"),
        (status = 400, description = "`bad_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
    ))]
pub async fn list_shells(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Paged<model::Shell>>, ApiError> {
    let Query(paging) = query?;
    check_modifiers(paging.level.as_deref(), paging.extent.as_deref())?;
    let shells = readable(&state, &caller)
        .iter()
        .map(|(key, twin, kind)| aas::shell(twin, key, kind))
        .collect();
    let page = page(
        shells,
        |s: &model::Shell| s.id.clone(),
        paging.limit,
        paging.cursor.as_deref(),
    )?;
    Ok(Json(page))
}

/// One shell.
#[utoipa::path(get, path = "/api/v1/aas/shells/{aasIdentifier}", tag = "aas",
    params(("aasIdentifier" = String, Path, description = AAS_ID)),
    responses(
        (status = 200, description = "AssetAdministrationShell (AAS v3.0 JSON)", content_type = "application/json"),
        (status = 400, description = "`bad_identifier`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`shell_not_found`", body = ErrorBody),
    ))]
pub async fn get_shell(
    State(state): State<AppState>,
    caller: Caller,
    Path(encoded): Path<String>,
) -> Result<Json<model::Shell>, ApiError> {
    let (key, twin, kind) = shell_target(&state, &caller, &encoded)?;
    Ok(Json(aas::shell(&twin, &key, &kind)))
}

/// The shell's submodel references (ModelReferences).
#[utoipa::path(get, path = "/api/v1/aas/shells/{aasIdentifier}/submodel-refs", tag = "aas",
    params(("aasIdentifier" = String, Path, description = AAS_ID), Paging),
    responses(
        (status = 200, description = "`{\"paging_metadata\", \"result\": [Reference]}`", content_type = "application/json"),
        (status = 400, description = "`bad_identifier`, `bad_query`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`shell_not_found`", body = ErrorBody),
    ))]
pub async fn submodel_refs(
    State(state): State<AppState>,
    caller: Caller,
    Path(encoded): Path<String>,
    query: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Paged<model::Reference>>, ApiError> {
    let (key, twin, kind) = shell_target(&state, &caller, &encoded)?;
    let Query(paging) = query?;
    check_modifiers(paging.level.as_deref(), paging.extent.as_deref())?;
    let refs = aas::shell(&twin, &key, &kind).submodels;
    page_in_order(refs, paging.limit, paging.cursor.as_deref()).map(Json)
}

/// The shell and its submodels as an AASX package (AAS Part 5): an OPC zip whose `aasx-origin`
/// part points at the environment, stored as JSON.
#[utoipa::path(get, path = "/api/v1/aas/shells/{aasIdentifier}/aasx", tag = "aas",
    params(("aasIdentifier" = String, Path, description = AAS_ID)),
    responses(
        (status = 200, description = "The `.aasx` file", content_type = "application/asset-administration-shell-package"),
        (status = 400, description = "`bad_identifier`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`shell_not_found`", body = ErrorBody),
    ))]
pub async fn aasx(
    State(state): State<AppState>,
    caller: Caller,
    Path(encoded): Path<String>,
) -> Result<Response, ApiError> {
    let (key, twin, kind) = shell_target(&state, &caller, &encoded)?;
    let environment = aas::environment(&twin, &key, &kind);
    let name = aas::shell_id_short(&key);
    // Serialising these types cannot fail (string keys, no maps of other keys); were it to,
    // it is the hub's fault, a 500.
    let json = serde_json::to_vec(&environment).map_err(|e| ApiError::Storage(e.to_string()))?;
    let package = aas::package::aasx(&name, &json);
    let mut response = package.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(aas::package::CONTENT_TYPE),
    );
    // The name is an idShort: letters, digits and `_` only, always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.aasx\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The submodels of the twins the caller may read: four per twin.
#[utoipa::path(get, path = "/api/v1/aas/submodels", tag = "aas",
    params(SubmodelQuery),
    responses(
        (status = 200, description = "`{\"paging_metadata\", \"result\": [Submodel]}`", content_type = "application/json"),
        (status = 400, description = "`bad_query`, `bad_identifier` (semanticId)", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
    ))]
pub async fn list_submodels(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<SubmodelQuery>, QueryRejection>,
) -> Result<Json<Paged<model::Submodel>>, ApiError> {
    let Query(query) = query?;
    check_modifiers(query.level.as_deref(), query.extent.as_deref())?;
    let semantic_id = query
        .semantic_id
        .as_deref()
        .map(|s| aas::decode_identifier("semanticId", s))
        .transpose()
        .map_err(|e| ApiError::BadIdentifier(e.to_string()))?;
    let mut submodels: Vec<model::Submodel> = readable(&state, &caller)
        .iter()
        .flat_map(|(key, twin, kind)| {
            Part::ALL
                .into_iter()
                .map(|part| aas::submodel(twin, key, kind, part))
        })
        .filter(|s| query.id_short.as_ref().is_none_or(|i| *i == s.id_short))
        .filter(|s| {
            semantic_id.as_ref().is_none_or(|wanted| {
                s.semantic_id
                    .as_ref()
                    .is_some_and(|r| r.keys.iter().any(|k| k.value == *wanted))
            })
        })
        .collect();
    submodels.sort_by(|a, b| a.id.cmp(&b.id));
    let page = page(
        submodels,
        |s: &model::Submodel| s.id.clone(),
        query.limit,
        query.cursor.as_deref(),
    )?;
    Ok(Json(page))
}

/// One submodel.
#[utoipa::path(get, path = "/api/v1/aas/submodels/{submodelIdentifier}", tag = "aas",
    params(("submodelIdentifier" = String, Path, description = SUBMODEL_ID)),
    responses(
        (status = 200, description = "Submodel (AAS v3.0 JSON)", content_type = "application/json"),
        (status = 400, description = "`bad_identifier`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`submodel_not_found`", body = ErrorBody),
    ))]
pub async fn get_submodel(
    State(state): State<AppState>,
    caller: Caller,
    Path(encoded): Path<String>,
) -> Result<Json<model::Submodel>, ApiError> {
    submodel_target(&state, &caller, &encoded).map(Json)
}

/// The submodel's values only (Part 2 `$value`): numbers and booleans as JSON values, texts
/// as `[{"en": ...}]`, collections as objects by idShort.
#[utoipa::path(get, path = "/api/v1/aas/submodels/{submodelIdentifier}/$value", tag = "aas",
    params(("submodelIdentifier" = String, Path, description = SUBMODEL_ID)),
    responses(
        (status = 200, description = "Value-only object, by idShort", content_type = "application/json"),
        (status = 400, description = "`bad_identifier`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`submodel_not_found`", body = ErrorBody),
    ))]
pub async fn submodel_value(
    State(state): State<AppState>,
    caller: Caller,
    Path(encoded): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let submodel = submodel_target(&state, &caller, &encoded)?;
    Ok(Json(model::value_only(&submodel.submodel_elements)))
}

/// The submodel's top-level elements, paged.
#[utoipa::path(get, path = "/api/v1/aas/submodels/{submodelIdentifier}/submodel-elements", tag = "aas",
    params(("submodelIdentifier" = String, Path, description = SUBMODEL_ID), Paging),
    responses(
        (status = 200, description = "`{\"paging_metadata\", \"result\": [SubmodelElement]}`", content_type = "application/json"),
        (status = 400, description = "`bad_identifier`, `bad_query`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`submodel_not_found`", body = ErrorBody),
    ))]
pub async fn submodel_elements(
    State(state): State<AppState>,
    caller: Caller,
    Path(encoded): Path<String>,
    query: Result<Query<Paging>, QueryRejection>,
) -> Result<Json<Paged<model::Element>>, ApiError> {
    let submodel = submodel_target(&state, &caller, &encoded)?;
    let Query(paging) = query?;
    check_modifiers(paging.level.as_deref(), paging.extent.as_deref())?;
    page_in_order(
        submodel.submodel_elements,
        paging.limit,
        paging.cursor.as_deref(),
    )
    .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_cursor_to_the_end() {
        let items: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let first = page(items.clone(), String::clone, Some(2), None).expect("page");
        assert_eq!(first.result, ["a", "b"]);
        let cursor = first.paging_metadata.cursor.expect("more");
        let second = page(items.clone(), String::clone, Some(2), Some(&cursor)).expect("page");
        assert_eq!(second.result, ["c", "d"]);
        let cursor = second.paging_metadata.cursor.expect("more");
        let last = page(items, String::clone, Some(2), Some(&cursor)).expect("page");
        assert_eq!(
            (last.result, last.paging_metadata.cursor),
            (vec!["e".to_owned()], None)
        );
    }

    #[test]
    fn items_in_their_own_order_page_by_position() {
        // Not sorted: a cursor by key would repeat "b" on the second page.
        let items = vec!["c", "a", "d", "b"];
        let first = page_in_order(items.clone(), Some(3), None).expect("page");
        assert_eq!(first.result, ["c", "a", "d"]);
        let cursor = first.paging_metadata.cursor.expect("more");
        let rest = page_in_order(items, Some(3), Some(&cursor)).expect("page");
        assert_eq!(
            (rest.result, rest.paging_metadata.cursor),
            (vec!["b"], None)
        );
    }

    #[test]
    fn a_bad_limit_or_cursor_is_a_bad_query() {
        for (limit, cursor) in [(Some(0), None), (Some(1001), None), (None, Some("!!"))] {
            let err = page(vec![1], |n: &i32| n.to_string(), limit, cursor).expect_err("refused");
            assert_eq!(err.status_and_code().1, "bad_query");
        }
    }
}
