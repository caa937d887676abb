use super::*;

/// A valid one-lab file with `machines` as the lab's `[[labs.machines]]` tables.
fn lab_with(machines: &str) -> String {
    format!(
        r#"
[[labs]]
id = "lab-a"
gateway = "gw-a"

{machines}
"#
    )
}

/// A one-lab file whose one machine, `cnc-7`, has an `opcua` source with the keys `source`.
fn opcua_machine(source: &str) -> String {
    lab_with(&format!(
        r#"
[[labs.machines]]
id = "cnc-7"
kind = "cnc-mill"
[labs.machines.source]
type = "opcua"
{source}
"#
    ))
}

/// The gateway's server entry for the first lab's first machine, which must be `opcua`.
fn opcua_server_of(region: &RegionFile) -> OpcUaServer {
    let Source::OpcUa(opcua) = &region.labs[0].machines[0].source else {
        panic!("an opcua source");
    };
    opcua
        .server("lab-a/cnc-7", "cnc-7".parse().expect("id"), "pki".into())
        .expect("a gateway server entry")
}

fn key_of(text: &str) -> String {
    match RegionFile::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            let key = e.key().unwrap_or_default().to_owned();
            assert!(
                e.to_string().starts_with(&key),
                "the message leads with the key: {e}"
            );
            key
        }
    }
}

#[test]
fn the_builtin_region_is_the_demo_of_two_labs_with_six_machines_each() {
    let region = RegionFile::builtin().expect("demo/region.toml is valid");
    let labs: Vec<&str> = region.labs.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(labs, ["aarhus-machining", "odense-machining"]);
    for lab in &region.labs {
        let ids: Vec<String> = lab
            .planned()
            .expect("expands")
            .iter()
            .map(|m| m.id.to_string())
            .collect();
        assert_eq!(
            ids,
            [
                "mill-1",
                "mill-2",
                "mill-3",
                "compressor-1",
                "printer-1",
                "lathe-1"
            ]
        );
        assert!(lab.public);
    }
    assert_eq!(region.hub.http_port, Some(8080));
    assert_eq!(region.broker.port, Some(1883));
    assert_eq!(region.simulation.seed, Some(1));
    assert_eq!(region.links.len(), 1);
}

#[test]
fn set_counts_changes_only_counted_machines() {
    let mut region = RegionFile::builtin().expect("valid");
    region.set_counts(1).expect("still valid");
    let planned = region.labs[1].planned().expect("expands");
    assert_eq!(planned.len(), 4);
    assert_eq!(planned[0].name.as_deref(), Some("CNC mill 1"));
    assert_eq!(
        region
            .set_counts(0)
            .map_err(|e| e.key().map(str::to_owned))
            .err(),
        Some(Some("labs[0].machines[0].count".to_owned()))
    );
}

#[test]
fn an_unknown_kind_is_named_by_its_key() {
    let text = lab_with(
        r#"
[[labs.machines]]
id = "m-1"
kind = "steam-engine"
source = { type = "simulated-mqtt", model = "compressor" }
"#,
    );
    assert_eq!(key_of(&text), "labs[0].machines[0].kind");
}

#[test]
fn a_machine_listed_twice_is_named_by_the_second_entry() {
    let text = lab_with(
        r#"
[[labs.machines]]
id = "mill"
count = 2
kind = "cnc-mill"
source = { type = "simulated-mqtt" }

[[labs.machines]]
id = "mill-2"
kind = "cnc-mill"
source = { type = "simulated-modbus" }
"#,
    );
    assert_eq!(key_of(&text), "labs[0].machines[1].id");
}

#[test]
fn a_serial_source_without_a_port_is_named_by_the_missing_key() {
    let text = format!(
        "{}\n{}",
        lab_with(""),
        r#"
[[labs]]
id = "lab-b"
gateway = "gw-b"

[[labs.machines]]
id = "lathe-1"
kind = "retrofit-lathe"
source = { type = "serial", node = "00000000000000aa" }
"#
    );
    assert_eq!(key_of(&text), "labs[1].machines[0].source.port");
}

#[test]
fn an_unknown_key_is_named_wherever_it_is() {
    let text = lab_with(
        r#"
[[labs.machines]]
id = "m-1"
kind = "compressor"
colour = "red"
source = { type = "simulated-mqtt" }
"#,
    );
    assert_eq!(key_of(&text), "labs[0].machines[0].colour");
    assert_eq!(key_of("[hub]\nhttp_prot = 1\n"), "hub.http_prot");
    assert_eq!(key_of("debug = true\n"), "debug");
    let text = lab_with(
        r#"
[[labs.machines]]
id = "m-1"
kind = "compressor"
source = { type = "simulated-mqtt", speed = 2 }
"#,
    );
    assert_eq!(key_of(&text), "labs[0].machines[0].source.speed");
}

#[test]
fn an_unknown_source_type_is_named_by_its_key() {
    let text = lab_with(
        r#"
[[labs.machines]]
id = "m-1"
kind = "compressor"
source = { type = "profinet" }
"#,
    );
    assert_eq!(key_of(&text), "labs[0].machines[0].source.type");
}

#[test]
fn a_modbus_source_is_checked_by_the_gateways_own_rules() {
    let text = lab_with(
        r#"
[[labs.machines]]
id = "press-1"
kind = "compressor"
[labs.machines.source]
type = "modbus"
address = "plc.local"
registers = [{ metric = "air.pressure_bar", unit = "bar", table = "holding", address = 0, data_type = "i32", scale = 0.01 }]
"#,
    );
    assert_eq!(key_of(&text), "labs[0].machines[0].source.address");
    let good = text.replace("plc.local", "plc.local:502");
    let region = RegionFile::parse(&good).expect("valid");
    let Source::Modbus(modbus) = &region.labs[0].machines[0].source else {
        panic!("a modbus source");
    };
    let device = modbus.device("d".into(), "press-1".parse().expect("id"));
    assert_eq!((device.unit_id, device.poll_interval_ms), (1, 1000));
}

#[test]
fn an_opcua_source_is_checked_by_the_gateways_own_rules_with_its_keys() {
    let machine = opcua_machine;
    let metric = r#"metrics = [{ node_id = "ns=2;s=Spindle.Speed", metric = "spindle.speed_rpm", unit = "rpm" }]"#;
    let bad_url = machine(&format!("endpoint_url = \"http://cell-a:4840\"\n{metric}"));
    assert_eq!(key_of(&bad_url), "labs[0].machines[0].source.endpoint_url");
    let half_login = machine(&format!(
        "endpoint_url = \"opc.tcp://cell-a:4840/\"\nusername = \"op\"\n{metric}"
    ));
    assert_eq!(
        key_of(&half_login),
        "labs[0].machines[0].source.password_env"
    );
    let bad_node = machine(
        r#"endpoint_url = "opc.tcp://cell-a:4840/"
metrics = [{ node_id = "Spindle.Speed", metric = "spindle.speed_rpm", unit = "rpm" }]"#,
    );
    assert_eq!(
        key_of(&bad_node),
        "labs[0].machines[0].source.metrics[0].node_id"
    );
    let good = machine(&format!(
        "endpoint_url = \"opc.tcp://cell-a:4840/\"\n{metric}"
    ));
    let region = RegionFile::parse(&good).expect("valid");
    let server = opcua_server_of(&region);
    assert_eq!(server.machines[0].metrics[0].unit, "rpm");
    assert_eq!(server.security_mode, Mode::None);
}

#[test]
fn a_simulated_opcua_machine_runs_its_kinds_model() {
    let region = RegionFile::parse(&lab_with(
        r#"
[[labs.machines]]
id = "cnc-opc"
kind = "cnc-mill"
source = { type = "simulated-opcua" }
"#,
    ))
    .expect("valid");
    let source = &region.labs[0].machines[0].source;
    assert_eq!(source.model("cnc-mill"), Some(MachineKind::CncMill));
    assert_eq!(source.describe(), "a simulated machine tool over OPC UA");
}

#[test]
fn a_node_id_serves_one_machine_and_must_be_hex() {
    let machine = |id: &str, node: &str| {
        format!(
            "[[labs.machines]]\nid = \"{id}\"\nkind = \"cnc-mill\"\nsource = {{ type = \"mqtt-node\", node = \"{node}\" }}\n"
        )
    };
    let text = lab_with(&format!(
        "{}{}",
        machine("a", "00000000000000aa"),
        machine("b", "00000000000000aa")
    ));
    assert_eq!(key_of(&text), "labs[0].machines[1].source.node");
    let text = lab_with(&machine("a", "xyz"));
    assert_eq!(key_of(&text), "labs[0].machines[0].source.node");
}

#[test]
fn users_games_and_links_must_refer_to_what_exists() {
    let base = lab_with(
        "[[labs.machines]]\nid = \"m\"\nkind = \"compressor\"\nsource = { type = \"simulated-mqtt\" }\n",
    );
    let student = format!("{base}\n[[users]]\nname = \"s\"\nrole = \"student\"\ngame = \"g\"\n");
    assert_eq!(key_of(&student), "users[0].game");
    let game = format!("{base}\n[[games]]\nid = \"g\"\nlabs = [\"lab-z\"]\n");
    assert_eq!(key_of(&game), "games[0].labs[0]");
    let link = format!("{base}\n[[links]]\nline = \"l\"\nfrom = \"lab-a/m\"\nto = \"lab-a/n\"\n");
    assert_eq!(key_of(&link), "links[0].to");
    let role = format!("{base}\n[[users]]\nname = \"t\"\nrole = \"wizard\"\n");
    assert_eq!(key_of(&role), "users[0].role");
}

#[test]
fn a_file_that_is_not_toml_is_an_error_not_a_panic() {
    assert!(RegionFile::parse("[[labs]\nid = ").is_err());
    assert!(RegionFile::parse("labs = 3").is_err());
    let summary = RegionFile::builtin().expect("valid").summary();
    assert!(summary.contains("lab aarhus-machining (gateway gw-aarhus, public): 6 machines"));
}

#[test]
fn the_lab_in_deploy_readme_joins_the_demo_region_as_written() {
    let readme = include_str!("../../../deploy/README.md");
    let section = readme
        .split_once("## Your own region")
        .expect("the section")
        .1;
    let lab = section
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a toml block")
        .0;
    let machine = section
        .split("```toml\n")
        .nth(2)
        .and_then(|rest| rest.split_once("```"))
        .expect("a second toml block: the OPC UA machine")
        .0;
    let region = RegionFile::parse(&format!("{BUILTIN}\n{lab}\n{machine}")).expect("valid");
    let added = region.labs.last().expect("a lab");
    assert!(matches!(added.machines[0].source, Source::Modbus(_)));
    assert!(matches!(added.machines[1].source, Source::OpcUa(_)));
}

#[test]
fn a_kind_from_the_files_own_catalogue_dir_is_known() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kinds = dir.path().join("kinds");
    std::fs::create_dir(&kinds).expect("created");
    let compressor = Catalogue::builtin();
    let compressor = compressor.get("compressor").expect("built in");
    // Any valid kind file will do: the compressor's own, renamed.
    let text = include_str!("../../../hub/catalogue/compressor.toml").replacen(
        &format!("id = \"{}\"", compressor.id),
        "id = \"moulder\"",
        1,
    );
    std::fs::write(kinds.join("moulder.toml"), text).expect("written");
    let region = dir.path().join("region.toml");
    let machines = "[[labs.machines]]\nid = \"m-1\"\nkind = \"moulder\"\nsource = { type = \"mqtt-node\", node = \"00000000000000aa\" }\n";
    std::fs::write(
        &region,
        format!("[hub]\ncatalogue_dir = \"kinds\"\n{}", lab_with(machines)),
    )
    .expect("written");
    let file = RegionFile::load(&region).expect("the kind is in the lab's catalogue");
    assert!(file.catalogue().expect("loads").get("moulder").is_some());
    std::fs::write(&region, lab_with(machines)).expect("written");
    assert_eq!(
        RegionFile::load(&region)
            .err()
            .and_then(|e| e.key().map(str::to_owned)),
        Some("labs[0].machines[0].kind".to_owned())
    );
}

#[test]
fn an_opcua_user_certificate_is_taken_from_beside_the_region_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let region = dir.path().join("region.toml");
    let machine = |identity: &str| {
        opcua_machine(&format!(
            r#"endpoint_url = "opc.tcp://cell-a:4840/"
security_policy = "Basic256Sha256"
security_mode = "Sign"
{identity}
metrics = [{{ node_id = "ns=2;s=Spindle.Speed", metric = "spindle.speed_rpm", unit = "rpm" }}]"#
        ))
    };
    std::fs::write(
        &region,
        machine("user_certificate = \"users/gw.der\"\nuser_private_key = \"users/gw.pem\""),
    )
    .expect("written");
    let file = RegionFile::load(&region).expect("valid");
    let server = opcua_server_of(&file);
    assert_eq!(
        server.user_certificate,
        Some(dir.path().join("users/gw.der"))
    );
    assert_eq!(
        server.user_private_key,
        Some(dir.path().join("users/gw.pem"))
    );

    let half = machine("user_certificate = \"users/gw.der\"");
    assert_eq!(key_of(&half), "labs[0].machines[0].source.user_private_key");
    let both = machine(
        "user_certificate = \"gw.der\"\nuser_private_key = \"gw.pem\"\nusername = \"op\"\npassword_env = \"PATH\"",
    );
    assert_eq!(key_of(&both), "labs[0].machines[0].source.user_certificate");
}
