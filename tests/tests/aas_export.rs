//! The AAS export through the real HTTP server: every twin of the running demo region as a
//! shell with its four submodels, their `$value` and element lists, and an `.aasx` package;
//! and the scope of a student, bad identifiers and unknown ones, as JSON errors.
//!
//! With `DEMOLAB_AAS_EXPORT_DIR` set, each shell's environment (assembled from the API's
//! answers) and its `.aasx` are written there for the independent check with the `aas-core3.0`
//! Python library (`tests/aas-check/check.py`, run by `.ci/run`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use demolab_demo::region::{Region, RegionOptions};
use demolab_tests::{http, http_get_bytes, hub_config, start_hub_with, wait_until};
use hub::aas::{encode_identifier, package};
use hub::auth::{AuthConfig, GameConfig, Role, UserConfig, hash_password};
use hub::catalogue::Catalogue;
use hub::directory::{Directory, LabConfig, MachineConfig};
use hub::twin::{TwinKey, TwinUpdate};
use serde_json::{Value, json};

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
    let (status, body) = http(addr, "GET", path, token, None).await?;
    let json = serde_json::from_str(&body)
        .with_context(|| format!("GET {path} answered {status} with non-JSON {body:?}"))?;
    Ok((status, json))
}

async fn get_ok(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    match get(addr, path, None).await? {
        (200, json) => Ok(json),
        (status, json) => bail!("GET {path} answered {status}: {json}"),
    }
}

fn id_shorts(elements: &Value) -> Vec<&str> {
    elements
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["idShort"].as_str()).collect())
        .unwrap_or_default()
}

/// Every shell, following the cursor two at a time.
async fn all_shells(addr: SocketAddr) -> anyhow::Result<Vec<Value>> {
    let mut shells = Vec::new();
    let mut path = "/api/v1/aas/shells?limit=2".to_owned();
    loop {
        let page = get_ok(addr, &path).await?;
        let result = page["result"].as_array().context("result")?;
        ensure!(result.len() <= 2, "limit 2 gave {}", result.len());
        shells.extend(result.iter().cloned());
        match page["paging_metadata"]["cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/aas/shells?limit=2&cursor={cursor}"),
            None => return Ok(shells),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_twin_is_exported_as_a_shell_with_live_submodels() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let region = Region::start(RegionOptions {
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        http_port: 0,
        mqtt_port: 0,
        data_dir: data.path().to_owned(),
        sample_period: Duration::from_millis(200),
        seed: 14,
        operator_password: Some("operator-pw".into()),
        ..RegionOptions::default()
    })
    .await?;
    let outcome = export(&region).await;
    region.shutdown().await?;
    outcome
}

async fn export(region: &Region) -> anyhow::Result<()> {
    let addr = region.hub().http_addr();
    let twins = region.hub().twins().clone();
    let configured: BTreeSet<String> = twins
        .directory()
        .labs()
        .flat_map(|lab| lab.machines.iter().map(|m| format!("{}/{}", lab.id, m.id)))
        .collect();
    // Live values with timestamps on every machine, the serial kit's lathes included.
    wait_until(Duration::from_secs(60), "every demo twin to report", || {
        configured.iter().all(|id| {
            TwinKey::parse(id)
                .and_then(|key| twins.get(&key))
                .is_some_and(|t| t.samples > 0)
        })
    })
    .await?;

    let shells = all_shells(addr).await?;
    let ids: BTreeSet<String> = shells
        .iter()
        .filter_map(|s| s["id"].as_str())
        .map(str::to_owned)
        .collect();
    let wanted: BTreeSet<String> = configured
        .iter()
        .map(|id| format!("urn:demolab:aas:{}", id.replace('/', ":")))
        .collect();
    ensure!(ids == wanted, "shells {ids:?}, twins {wanted:?}");

    let dump_dir = std::env::var_os("DEMOLAB_AAS_EXPORT_DIR").map(PathBuf::from);
    for shell in &shells {
        let id = shell["id"].as_str().context("id")?;
        let encoded = encode_identifier(id);
        ensure!(shell["modelType"] == "AssetAdministrationShell", "{shell}");
        ensure!(
            shell["assetInformation"]["assetKind"] == "Instance",
            "{shell}"
        );
        let one = get_ok(addr, &format!("/api/v1/aas/shells/{encoded}")).await?;
        ensure!(one["id"] == id && one["assetInformation"] == shell["assetInformation"]);

        let refs = get_ok(addr, &format!("/api/v1/aas/shells/{encoded}/submodel-refs")).await?;
        let refs = refs["result"].as_array().context("refs")?.clone();
        ensure!(refs.len() == 4, "{refs:?}");
        let refs_path = format!("/api/v1/aas/shells/{encoded}/submodel-refs?limit=3");
        let first = get_ok(addr, &refs_path).await?;
        let cursor = first["paging_metadata"]["cursor"]
            .as_str()
            .context("a cursor")?;
        let rest = get_ok(addr, &format!("{refs_path}&cursor={cursor}")).await?;
        ensure!(
            [&first["result"], &rest["result"]]
                .iter()
                .filter_map(|page| page.as_array())
                .flatten()
                .eq(refs.iter()),
            "paged references {first} {rest} differ from {refs:?}"
        );
        ensure!(rest["paging_metadata"].get("cursor").is_none(), "{rest}");
        let mut submodels = Vec::new();
        for reference in &refs {
            ensure!(reference["type"] == "ModelReference", "{reference}");
            ensure!(reference["keys"][0]["type"] == "Submodel", "{reference}");
            let sm_id = reference["keys"][0]["value"].as_str().context("key")?;
            let sm_path = format!("/api/v1/aas/submodels/{}", encode_identifier(sm_id));
            let submodel = get_ok(addr, &sm_path).await?;
            ensure!(submodel["id"] == sm_id && submodel["modelType"] == "Submodel");
            let value = get_ok(addr, &format!("{sm_path}/$value")).await?;
            let elements = get_ok(addr, &format!("{sm_path}/submodel-elements?limit=1")).await?;
            ensure!(
                elements["result"].as_array().map(Vec::len) == Some(1),
                "{elements}"
            );
            let first = &submodel["submodelElements"][0];
            ensure!(elements["result"][0] == *first, "{elements} vs {first}");
            check_submodel(&submodel, &value)?;
            submodels.push(submodel);
        }
        let environment = json!({
            "assetAdministrationShells": [one],
            "submodels": submodels,
        });

        let (status, head, aasx) =
            http_get_bytes(addr, &format!("/api/v1/aas/shells/{encoded}/aasx"), None).await?;
        ensure!(status == 200, "aasx answered {status}");
        ensure!(
            head.contains("content-type: application/asset-administration-shell-package"),
            "{head}"
        );
        let id_short = one["idShort"].as_str().context("idShort")?;
        ensure!(
            head.contains(&format!(
                "filename=\"{}.aasx\"",
                id_short.to_ascii_lowercase()
            )),
            "{head}"
        );
        check_package(&aasx, id_short, id)?;

        if let Some(dir) = &dump_dir {
            dump(dir, id_short, &environment, &aasx)?;
        }
    }
    if let Some(dir) = &dump_dir {
        // The checker compares its count with this, so a shell left out cannot pass unseen.
        std::fs::write(dir.join("expected-shells"), shells.len().to_string())?;
    }

    let submodels = get_ok(addr, "/api/v1/aas/submodels?idShort=OperationalData").await?;
    ensure!(
        submodels["result"].as_array().map(Vec::len) == Some(configured.len()),
        "{submodels}"
    );
    let nameplate = encode_identifier("https://admin-shell.io/zvei/nameplate/2/0/Nameplate");
    let nameplates = get_ok(
        addr,
        &format!("/api/v1/aas/submodels?semanticId={nameplate}"),
    )
    .await?;
    ensure!(
        nameplates["result"].as_array().is_some_and(
            |r| r.len() == configured.len() && r.iter().all(|s| s["idShort"] == "Nameplate")
        ),
        "{nameplates}"
    );
    Ok(())
}

/// Writes a shell's environment (as assembled from the API) and its package for the checker.
fn dump(dir: &Path, id_short: &str, environment: &Value, aasx: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(format!("{id_short}.json")),
        serde_json::to_vec_pretty(environment)?,
    )?;
    std::fs::write(dir.join(format!("{id_short}.aasx")), aasx)?;
    Ok(())
}

fn check_submodel(submodel: &Value, value: &Value) -> anyhow::Result<()> {
    let elements = &submodel["submodelElements"];
    match submodel["idShort"].as_str() {
        Some("Nameplate") => {
            let designation = &value["ManufacturerProductDesignation"];
            ensure!(designation[0]["en"].is_string(), "{value}");
            // The demo's attributes fill the nameplate's fields, not only the kind's name.
            ensure!(value["ManufacturerName"][0]["en"].is_string(), "{value}");
            ensure!(
                value["ManufacturerProductType"][0]["en"].is_string(),
                "{value}"
            );
            ensure!(value["YearOfConstruction"] == "2026", "{value}");
        }
        Some("TechnicalData") => {
            ensure!(
                id_shorts(elements)[..2] == ["GeneralInformation", "TechnicalProperties"],
                "{elements}"
            );
            let metrics = &value["TechnicalProperties"]["Metrics"];
            ensure!(
                metrics.as_object().is_some_and(|m| !m.is_empty()),
                "{value}"
            );
        }
        Some("OperationalData") => {
            let properties = value["Properties"].as_object().context("Properties")?;
            ensure!(!properties.is_empty(), "{value}");
            let mut reported = 0;
            for (name, property) in properties {
                ensure!(property["Unit"].is_string(), "{name}: {property}");
                // A metric of the birth has no value until its first sample.
                if property["Value"].is_null() {
                    continue;
                }
                ensure!(property["Value"].is_number(), "{name}: {property}");
                let stamp = property["Timestamp"].as_str().context("Timestamp")?;
                ensure!(stamp.len() == 24 && stamp.ends_with('Z'), "{name}: {stamp}");
                reported += 1;
            }
            ensure!(reported > 0, "no live value in {value}");
            ensure!(value["Connectivity"]["Online"] == true, "{value}");
        }
        Some("TimeSeries") => {
            let segments = value["Segments"].as_object().context("Segments")?;
            ensure!(!segments.is_empty(), "{value}");
            for (name, segment) in segments {
                let endpoint = segment["Endpoint"].as_str().context("Endpoint")?;
                ensure!(
                    endpoint.starts_with("/api/v1/twins/") && endpoint.ends_with("/history"),
                    "{name}: {endpoint}"
                );
                ensure!(
                    segment["Query"]
                        .as_str()
                        .is_some_and(|q| q.starts_with("metric="))
                );
            }
        }
        other => bail!("unexpected submodel {other:?}"),
    }
    Ok(())
}

fn check_package(aasx: &[u8], id_short: &str, shell_id: &str) -> anyhow::Result<()> {
    let entries = package::read_stored_zip(aasx).context("the .aasx is not a readable zip")?;
    let part = |name: &str| {
        entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, data)| String::from_utf8_lossy(data).into_owned())
            .with_context(|| format!("no part {name}"))
    };
    let types = part("[Content_Types].xml")?;
    ensure!(types.contains(r#"Extension="rels""#) && types.contains(r#"Extension="json""#));
    ensure!(part("_rels/.rels")?.contains(package::ORIGIN_RELATIONSHIP));
    part("aasx/aasx-origin")?;
    let spec = format!("aasx/{id_short}/{id_short}.aas.json");
    let origin_rels = part("aasx/_rels/aasx-origin.rels")?;
    ensure!(origin_rels.contains(package::SPEC_RELATIONSHIP));
    ensure!(
        origin_rels.contains(&format!("Target=\"/{spec}\"")),
        "{origin_rels}"
    );
    let environment: Value = serde_json::from_str(&part(&spec)?)?;
    ensure!(environment["assetAdministrationShells"][0]["id"] == shell_id);
    ensure!(environment["submodels"].as_array().map(Vec::len) == Some(4));
    Ok(())
}

fn birth(lab: &str, machine: &str) -> anyhow::Result<TwinUpdate> {
    Ok(TwinUpdate::Birth {
        key: TwinKey::parse(&format!("{lab}/{machine}")).context("key")?,
        gateway: "gw".parse()?,
        boot: Some(1),
        node_seq: None,
        metrics: vec![("spindle.power_w".parse()?, protocol::Unit::Watt)],
        timestamp: 1_000,
    })
}

async fn login(addr: SocketAddr, user: &str) -> anyhow::Result<String> {
    let body = json!({"user": user, "password": "secret"}).to_string();
    let (status, text) = http(
        addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(body.as_bytes()),
    )
    .await?;
    ensure!(status == 200, "{status} {text}");
    let doc: Value = serde_json::from_str(&text)?;
    Ok(doc["token"].as_str().context("token")?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_sees_only_the_shells_of_his_labs_and_bad_identifiers_are_named()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let user = |name: &str, role| -> anyhow::Result<UserConfig> {
        Ok(UserConfig {
            name: name.into(),
            role,
            password_hash: hash_password("secret")?,
            game: (role == Role::Student).then(|| "g".to_owned()),
        })
    };
    // Attributes as a hand-written lab file may have them: empty, with control characters,
    // too long for an AAS text, keys that are no idShort. The export must stay valid.
    let odd = MachineConfig {
        id: "mill-1".parse()?,
        kind: Some("cnc-mill".into()),
        name: Some("Mill\u{7} with a name far longer than an AAS name may be ".repeat(4)),
        line: None,
        attributes: [
            ("manufacturer", String::new()),
            ("model", "X\u{1}Y".to_owned()),
            ("serial", "S".repeat(3000)),
            ("weird key!", "v".to_owned()),
            ("weird-key?", "w".to_owned()),
            ("", "nameless".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    };
    let lab = |id: &str, machines| -> anyhow::Result<LabConfig> {
        Ok(LabConfig {
            id: id.parse()?,
            name: id.into(),
            location: String::new(),
            gateways: vec!["gw".parse()?],
            machines,
            accept_new_machines: true,
        })
    };
    let directory = Directory::new(
        Catalogue::builtin(),
        vec![lab("lab-a", vec![odd])?, lab("lab-b", vec![])?],
        vec![],
    )?;
    let hub = start_hub_with(hub::HubConfig {
        directory: Arc::new(directory),
        auth: AuthConfig {
            users: vec![user("olga", Role::Operator)?, user("sam", Role::Student)?],
            games: vec![GameConfig {
                id: "g".into(),
                name: "G".into(),
                labs: vec!["lab-a".parse()?],
            }],
            ..AuthConfig::default()
        },
        ..hub_config(data.path())
    })
    .await?;
    hub.twins().apply(birth("lab-a", "mill-1")?);
    hub.twins().apply(birth("lab-b", "mill-2")?);
    let addr = hub.http_addr();
    let (olga, sam) = (login(addr, "olga").await?, login(addr, "sam").await?);
    let shell =
        |lab: &str, machine: &str| encode_identifier(&format!("urn:demolab:aas:{lab}:{machine}"));
    let submodel = |lab: &str, machine: &str| {
        encode_identifier(&format!("urn:demolab:sm:{lab}:{machine}:OperationalData"))
    };

    // The odd attributes' shell, for the independent check beside the demo's.
    let (status, odd_shell) = get(
        addr,
        &format!("/api/v1/aas/shells/{}", shell("lab-a", "mill-1")),
        Some(&olga),
    )
    .await?;
    ensure!(status == 200, "{odd_shell}");
    let (_, nameplate) = get(
        addr,
        &format!(
            "/api/v1/aas/submodels/{}",
            encode_identifier("urn:demolab:sm:lab-a:mill-1:Nameplate")
        ),
        Some(&olga),
    )
    .await?;
    let mut submodels = vec![nameplate];
    for part in ["TechnicalData", "OperationalData", "TimeSeries"] {
        let id = encode_identifier(&format!("urn:demolab:sm:lab-a:mill-1:{part}"));
        submodels.push(
            get(addr, &format!("/api/v1/aas/submodels/{id}"), Some(&olga))
                .await?
                .1,
        );
    }
    let environment = json!({"assetAdministrationShells": [odd_shell], "submodels": submodels});
    let (status, _, aasx) = http_get_bytes(
        addr,
        &format!("/api/v1/aas/shells/{}/aasx", shell("lab-a", "mill-1")),
        Some(&olga),
    )
    .await?;
    ensure!(status == 200);
    if let Some(dir) = std::env::var_os("DEMOLAB_AAS_EXPORT_DIR").map(PathBuf::from) {
        let dir = dir.join("edge-cases");
        dump(&dir, "lab_a__mill_1", &environment, &aasx)?;
        std::fs::write(dir.join("expected-shells"), "1")?;
    }

    let code = |doc: &Value| doc["error"]["code"].as_str().unwrap_or_default().to_owned();
    let (status, anonymous) = get(addr, "/api/v1/aas/shells", None).await?;
    ensure!(
        (status, code(&anonymous).as_str()) == (401, "unauthenticated"),
        "{anonymous}"
    );

    let (status, mine) = get(addr, "/api/v1/aas/shells", Some(&sam)).await?;
    ensure!(status == 200, "{mine}");
    let ids: Vec<&str> = mine["result"]
        .as_array()
        .context("result")?
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    ensure!(ids == ["urn:demolab:aas:lab-a:mill-1"], "{mine}");
    let (_, all) = get(addr, "/api/v1/aas/shells", Some(&olga)).await?;
    ensure!(all["result"].as_array().map(Vec::len) == Some(2), "{all}");
    let (_, subs) = get(addr, "/api/v1/aas/submodels", Some(&sam)).await?;
    ensure!(subs["result"].as_array().map(Vec::len) == Some(4), "{subs}");

    for path in [
        format!("/api/v1/aas/shells/{}", shell("lab-b", "mill-2")),
        format!(
            "/api/v1/aas/shells/{}/submodel-refs",
            shell("lab-b", "mill-2")
        ),
        format!("/api/v1/aas/shells/{}/aasx", shell("lab-b", "mill-2")),
        format!("/api/v1/aas/submodels/{}", submodel("lab-b", "mill-2")),
        format!(
            "/api/v1/aas/submodels/{}/$value",
            submodel("lab-b", "mill-2")
        ),
        format!(
            "/api/v1/aas/submodels/{}/submodel-elements",
            submodel("lab-b", "mill-2")
        ),
    ] {
        let (status, doc) = get(addr, &path, Some(&sam)).await?;
        ensure!(
            (status, code(&doc).as_str()) == (403, "forbidden"),
            "{path}: {status} {doc}"
        );
        let (status, _, _) = http_get_bytes(addr, &path, Some(&olga)).await?;
        ensure!(status == 200, "{path} for the operator: {status}");
    }

    let (status, doc) = get(
        addr,
        &format!("/api/v1/aas/shells/{}", shell("lab-a", "ghost")),
        Some(&sam),
    )
    .await?;
    ensure!(
        (status, code(&doc).as_str()) == (404, "shell_not_found"),
        "{doc}"
    );
    let foreign = encode_identifier("https://example.com/aas/1");
    let (status, doc) = get(
        addr,
        &format!("/api/v1/aas/submodels/{foreign}"),
        Some(&olga),
    )
    .await?;
    ensure!(
        (status, code(&doc).as_str()) == (404, "submodel_not_found"),
        "{doc}"
    );
    ensure!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("https://example.com/aas/1")),
        "{doc}"
    );

    for (path, param) in [
        ("/api/v1/aas/shells/not*base64", "aasIdentifier"),
        ("/api/v1/aas/submodels/%25%25/$value", "submodelIdentifier"),
        ("/api/v1/aas/submodels?semanticId=***", "semanticId"),
    ] {
        let (status, doc) = get(addr, path, Some(&olga)).await?;
        ensure!(
            (status, code(&doc).as_str()) == (400, "bad_identifier"),
            "{path}: {doc}"
        );
        let message = doc["error"]["message"].as_str().unwrap_or_default();
        ensure!(message.contains(param), "{path}: {message}");
    }
    for path in [
        "/api/v1/aas/shells?limit=0",
        "/api/v1/aas/shells?cursor=!!",
        "/api/v1/aas/shells?level=shallow",
        "/api/v1/aas/shells?colour=red",
    ] {
        let (status, doc) = get(addr, path, Some(&olga)).await?;
        ensure!(
            (status, code(&doc).as_str()) == (400, "bad_query"),
            "{path}: {doc}"
        );
    }
    hub.shutdown().await?;
    Ok(())
}
