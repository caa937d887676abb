//! The web platform: one page and its scripts and styles, compiled into the hub so a lab without
//! internet (and `cargo run --release` without Node.js) serves everything itself.
//!
//! The page routes on the client; every path it can show (`/machine/{lab}/{machine}`, …) serves
//! the same page so that deep links and reloads work.

use axum::extract::Path;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use super::ApiError;

/// The static files under `/assets/`: name, content type, contents.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript", include_str!("../web/app.js")),
    ("api.js", "text/javascript", include_str!("../web/api.js")),
    ("i18n.js", "text/javascript", include_str!("../web/i18n.js")),
    (
        "chart.js",
        "text/javascript",
        include_str!("../web/chart.js"),
    ),
    (
        "views.js",
        "text/javascript",
        include_str!("../web/views.js"),
    ),
    (
        "guide.js",
        "text/javascript",
        include_str!("../web/guide.js"),
    ),
    (
        "games.js",
        "text/javascript",
        include_str!("../web/games.js"),
    ),
    (
        "machine.js",
        "text/javascript",
        include_str!("../web/machine.js"),
    ),
    ("app.css", "text/css", include_str!("../web/app.css")),
    ("icon.svg", "image/svg+xml", include_str!("../web/icon.svg")),
    // The API docs page (`/api/docs`); separate files so that no page needs inline code,
    // which the Content-Security-Policy forbids.
    ("docs.js", "text/javascript", include_str!("docs.js")),
    ("docs.css", "text/css", include_str!("docs.css")),
];

pub(super) async fn page() -> Html<&'static str> {
    Html(include_str!("../web/index.html"))
}

pub(super) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or(ApiError::RouteNotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            // The assets change only with the binary; revalidating keeps an upgraded hub's
            // page consistent without a build step to fingerprint names.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_have_no_inline_scripts_or_styles_the_policy_would_block() {
        for page in [include_str!("../web/index.html"), include_str!("docs.html")] {
            assert!(!page.contains("<style"), "inline style");
            assert!(!page.contains(" style="), "style attribute");
            for (at, _) in page.match_indices("<script") {
                let tag = &page[at..page[at..].find('>').map_or(page.len(), |end| at + end)];
                assert!(tag.contains(" src="), "inline script: {tag}");
            }
        }
        let scripts: Vec<&str> = ASSETS
            .iter()
            .filter(|(_, kind, _)| *kind == "text/javascript")
            .map(|(_, _, body)| *body)
            .collect();
        for script in scripts {
            assert!(!script.contains("eval(") && !script.contains("new Function"));
            assert!(!script.contains("setAttribute(\"style\""));
        }
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        let mut sources: Vec<&str> = ASSETS.iter().map(|(_, _, body)| *body).collect();
        sources.push(include_str!("../web/index.html"));
        sources.push(include_str!("docs.html"));
        for source in sources {
            for (at, _) in source.match_indices("/assets/") {
                let name: String = source[at + 8..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                    .collect();
                assert!(
                    ASSETS.iter().any(|(file, _, _)| *file == name),
                    "/assets/{name} is referenced but not served"
                );
            }
        }
    }
}
