//! `demolab-broker-files`: Mosquitto's configuration from Demolab's access configuration, so
//! that an external Mosquitto enforces exactly what the embedded broker does.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use demolab_broker::access::mosquitto::{
    MosquittoSettings, Secrets, mosquitto_acl, mosquitto_conf, mosquitto_password_file,
};
use demolab_broker::access::{AccessConfig, hash_password};

/// Writes Mosquitto 2.0's acl_file, mosquitto.conf and (given the passwords) password_file
/// from a Demolab access configuration (deploy/access.toml).
///
/// The access configuration holds argon2 hashes only, which Mosquitto cannot verify; to
/// write password_file, pass --secrets with the plain passwords (never commit that file).
/// Each password is checked against its argon2 hash first, so both brokers accept exactly
/// the same credentials. Without --secrets, make password_file with `mosquitto_passwd`.
///
/// Example:
///   demolab-broker-files --access deploy/access.toml --out deploy/mosquitto \
///       --files-dir /etc/mosquitto/demolab
///   demolab-broker-files hash < password.txt     # a password_hash for access.toml
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    generate: Generate,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reads one password from standard input (first line) and prints its argon2id PHC
    /// string for a `password_hash` entry.
    Hash,
}

#[derive(Debug, clap::Args)]
struct Generate {
    /// The access configuration (TOML, `[[users]]` entries).
    #[arg(long, value_name = "FILE")]
    access: Option<PathBuf>,
    /// Directory to write acl_file, mosquitto.conf and password_file into (created if
    /// missing; existing files are replaced).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// TOML file with the plain passwords, `[passwords]` `name = "..."`; enables
    /// password_file.
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
    /// Where Mosquitto will find the files, written into mosquitto.conf (Mosquitto resolves
    /// relative paths against its working directory). Default: --out, made absolute.
    #[arg(long, value_name = "DIR")]
    files_dir: Option<PathBuf>,
    /// The listener's port in mosquitto.conf.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// The listener's bind address in mosquitto.conf; all interfaces when omitted.
    #[arg(long, value_name = "ADDRESS")]
    bind: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Hash) => hash(),
        None => generate(cli.generate),
    }
}

fn hash() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("empty password on standard input");
    }
    println!("{}", hash_password(password)?);
    Ok(())
}

fn generate(args: Generate) -> anyhow::Result<()> {
    let (Some(access_path), Some(out)) = (args.access, args.out) else {
        bail!("--access and --out are required (see --help)");
    };
    let access = AccessConfig::load(&access_path)
        .with_context(|| format!("loading {}", access_path.display()))?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let files_dir = match args.files_dir {
        Some(dir) => dir,
        None => std::path::absolute(&out)
            .with_context(|| format!("making {} absolute", out.display()))?,
    };
    let in_files_dir = |name: &str| files_dir.join(name).display().to_string();

    write(&out.join("acl_file"), &mosquitto_acl(&access))?;
    let acl_file = in_files_dir("acl_file");
    let password_file = in_files_dir("password_file");
    write(
        &out.join("mosquitto.conf"),
        &mosquitto_conf(&MosquittoSettings {
            port: args.port,
            bind_address: args.bind.as_deref(),
            acl_file: &acl_file,
            password_file: &password_file,
        }),
    )?;
    match args.secrets {
        Some(path) => {
            let secrets =
                Secrets::load(&path).with_context(|| format!("loading {}", path.display()))?;
            let file = mosquitto_password_file(&access, &secrets).with_context(|| {
                format!("checking {} against the access config", path.display())
            })?;
            write(&out.join("password_file"), &file)?;
        }
        None => eprintln!(
            "no --secrets: password_file not written; create it with `mosquitto_passwd -c {password_file} USER`"
        ),
    }
    eprintln!(
        "wrote Mosquitto files for {} users to {}",
        access.users().count(),
        out.display()
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
