//! The tar archive that carries a runner's files (its credential) into a created container.
//!
//! Why an archive: the engine's only way to put a file into a container before it starts is
//! `PUT /containers/{id}/archive`, which takes a tar stream. The credential must be there
//! before the runner starts and must never pass through the environment or the command line.
//!
//! The archive holds one directory (the work directory, mode 0700) and its files, owned by the
//! container's user when that user is numeric. A minimal ustar writer: two entry types, names
//! checked to stay inside the directory, so no dependency is needed for it.

use crate::backend::InstanceFile;

const BLOCK: usize = 512;

/// Who owns the archive's entries inside the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Builds `DIR/` (0700) and `DIR/NAME` for every file (0600 when secret, else 0644).
pub fn work_dir_archive(
    dir: &str,
    files: &[InstanceFile],
    owner: Owner,
) -> Result<Vec<u8>, String> {
    check_name(dir)?;
    let mut out = Vec::new();
    append(&mut out, &format!("{dir}/"), b'5', 0o700, owner, &[])?;
    for file in files {
        check_name(&file.name)?;
        let mode = if file.secret { 0o600 } else { 0o644 };
        append(
            &mut out,
            &format!("{dir}/{}", file.name),
            b'0',
            mode,
            owner,
            &file.contents,
        )?;
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

/// A plain file name: no directory part, nothing that could climb out of the work directory.
fn check_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 64;
    if plain {
        Ok(())
    } else {
        Err(format!(
            "instance file name {name:?} is not a plain file name"
        ))
    }
}

fn append(
    out: &mut Vec<u8>,
    path: &str,
    kind: u8,
    mode: u32,
    owner: Owner,
    contents: &[u8],
) -> Result<(), String> {
    let mut header = [0u8; BLOCK];
    let name = path.as_bytes();
    if name.len() >= 100 {
        return Err(format!("archive entry name {path:?} is too long"));
    }
    header[..name.len()].copy_from_slice(name);
    octal(&mut header[100..108], u64::from(mode));
    octal(&mut header[108..116], u64::from(owner.uid));
    octal(&mut header[116..124], u64::from(owner.gid));
    octal(&mut header[124..136], contents.len() as u64);
    octal(&mut header[136..148], crate::clock::now_ms() / 1000);
    header[156] = kind;
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field filled with spaces.
    header[148..156].fill(b' ');
    let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
    let digits = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(digits.as_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(contents);
    let padding = (BLOCK - contents.len() % BLOCK) % BLOCK;
    out.resize(out.len() + padding, 0);
    Ok(())
}

/// Writes `value` as zero-padded octal digits followed by a NUL, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    let bytes = text.as_bytes();
    // A value too large for the field keeps its low digits; sizes here are tiny.
    let start = bytes.len().saturating_sub(width);
    field[..width].copy_from_slice(&bytes[start..]);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, contents: &[u8], secret: bool) -> InstanceFile {
        InstanceFile {
            name: name.into(),
            contents: contents.to_vec(),
            secret,
        }
    }

    #[test]
    fn the_system_tar_reads_it_with_modes_and_owners() {
        let files = [
            file("runner-token", b"s3cret-token", true),
            file("notes.txt", &[b'x'; 700], false),
        ];
        let archive = work_dir_archive(
            "work",
            &files,
            Owner {
                uid: 1000,
                gid: 1001,
            },
        )
        .unwrap();
        assert_eq!(archive.len() % BLOCK, 0);
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("a.tar");
        std::fs::write(&tar_path, &archive).unwrap();
        let listing = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&tar_path)
            .arg("--numeric-owner")
            .output()
            .unwrap();
        assert!(
            listing.status.success(),
            "tar -t failed: {}",
            String::from_utf8_lossy(&listing.stderr)
        );
        let text = String::from_utf8_lossy(&listing.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("drwx------ 1000/1001") && lines[0].ends_with("work/"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("-rw------- 1000/1001") && lines[1].ends_with("work/runner-token"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("-rw-r--r-- 1000/1001") && lines[2].contains(" 700 "),
            "{text}"
        );
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let extract = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&tar_path)
            .arg("-C")
            .arg(&out)
            .status()
            .unwrap();
        assert!(extract.success());
        assert_eq!(
            std::fs::read(out.join("work/runner-token")).unwrap(),
            b"s3cret-token"
        );
        assert_eq!(
            std::fs::read(out.join("work/notes.txt")).unwrap().len(),
            700
        );
    }

    #[test]
    fn names_cannot_leave_the_directory() {
        for bad in ["", ".", "..", "../etc/passwd", "a/b", "/abs"] {
            assert!(
                work_dir_archive("work", &[file(bad, b"x", true)], Owner::default()).is_err(),
                "{bad:?}"
            );
        }
        assert!(work_dir_archive("../work", &[], Owner::default()).is_err());
        assert!(
            work_dir_archive("work", &[file(".runner", b"{}", true)], Owner::default()).is_ok()
        );
    }
}
