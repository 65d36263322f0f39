//! `imgmount info [--json] IMAGE`: the partition table and what is on each partition.
//!
//! The JSON form is a stable interface (schema in README.md): field names never change
//! meaning, absent facts are `null`, never missing keys.

use super::open_image_at;
use crate::cli::InfoArgs;
use crate::report::{CmdResult, Failure};
use fs_drivers::disk::{Image, Volume};
use fs_drivers::probe::FsKind;
use serde::Serialize;

#[derive(Serialize, Debug)]
pub struct Report {
    pub image: String,
    pub size: u64,
    /// Container layers peeled off the file, outermost first.
    pub layers: Vec<LayerReport>,
    pub scheme: &'static str,
    pub sector_size: u32,
    pub disk_id: Option<String>,
    pub truncated: bool,
    pub volumes: Vec<VolumeReport>,
    pub warnings: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct LayerReport {
    pub format: String,
    pub detail: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct VolumeReport {
    pub index: Option<u32>,
    pub start: u64,
    pub size: u64,
    #[serde(rename = "type")]
    pub type_code: Option<String>,
    pub type_name: Option<&'static str>,
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub bootable: bool,
    pub logical: bool,
    pub container: bool,
    pub filesystem: Option<FsReport>,
    pub note: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct FsReport {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub blkid_type: &'static str,
    pub label: Option<String>,
    pub uuid: Option<String>,
    pub supported: bool,
}

pub fn run(args: &InfoArgs) -> CmdResult {
    let image = open_image_at(&args.image, false, args.open.offset, args.cow.as_deref())?;
    let shown = args.image.display().to_string();
    image
        .check_recognised()
        .map_err(|e| Failure::new(&shown, &e))?;
    let report = build(&image, &shown).map_err(|e| Failure::new(&shown, &e))?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::msg(format!("{shown}: cannot write JSON: {e}")))?;
        s.push('\n');
        s
    } else {
        human(&report)
    };
    print!("{text}");
    match image.truncation() {
        Some(why) => Err(Failure::msg(format!(
            "{shown}: the image is truncated: {why}"
        ))),
        None => Ok(()),
    }
}

pub fn build(image: &Image, shown: &str) -> fs_drivers::Result<Report> {
    let table = image.table();
    // A copy-on-write overlay sits above the containers: the outermost layer.
    let overlay = image.overlay().map(super::cow_layer::report);
    Ok(Report {
        image: shown.to_string(),
        size: image.size(),
        layers: overlay
            .into_iter()
            .chain(image.layers().iter().map(|l| LayerReport {
                format: l.format.clone(),
                detail: (!l.detail.is_empty()).then(|| l.detail.clone()),
            }))
            .collect(),
        scheme: table.scheme.name(),
        sector_size: table.sector_size,
        disk_id: image.disk_id()?,
        truncated: image.truncation().is_some(),
        volumes: image.volumes().iter().map(volume_report).collect(),
        warnings: table.warnings.clone(),
    })
}

fn volume_report(v: &Volume) -> VolumeReport {
    let filesystem = v.probe.as_ref().map(|p| FsReport {
        kind: p.kind.name(),
        blkid_type: p.kind.blkid_type(),
        label: p.label.clone(),
        uuid: p.uuid.clone(),
        supported: p.kind.is_supported(),
    });
    let note = if let Some(why) = &v.probe_error {
        Some(format!("could not be probed: {why}"))
    } else if v.container {
        Some("extended partition: holds the logical partitions".into())
    } else {
        match &v.probe {
            Some(p) if p.kind == fs_drivers::probe::FsKind::Luks => Some(luks_note(v)),
            Some(p) if !p.kind.is_supported() => {
                Some(format!("{} (not readable by imgmount)", p.kind.name()))
            }
            Some(p) if p.kind == FsKind::Iso9660 => {
                fs_drivers::iso9660::boot_summary(v.device.as_ref())
            }
            Some(_) => None,
            None => Some("no filesystem recognised".into()),
        }
    };
    VolumeReport {
        index: v.index,
        start: v.start,
        size: v.size,
        type_code: v.ptype.map(|t| t.code()),
        type_name: v.ptype.and_then(|t| t.name()),
        name: v.name.clone(),
        uuid: v.uuid.map(|g| g.to_string()),
        bootable: v.bootable,
        logical: v.logical,
        container: v.container,
        filesystem,
        note,
    }
}

/// A locked LUKS volume: what its header says (no key is needed for that), and that nothing
/// below it can be seen without one.
fn luks_note(v: &Volume) -> String {
    match fs_drivers::container::luks::read_header(v.device.as_ref()) {
        Ok(Some(h)) => format!("{}; locked (--key-file shows what is inside)", h.summary()),
        Ok(None) => "LUKS".into(),
        Err(e) => format!("LUKS header unreadable: {}", crate::report::describe(&e)),
    }
}

/// "64 MiB", "1.5 GiB", "512 B".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn fs_cell(v: &VolumeReport) -> String {
    if v.container {
        // The TYPE column already says "Extended".
        return "-".into();
    }
    match (&v.filesystem, &v.note) {
        (Some(fs), _) if fs.supported => fs.kind.to_string(),
        (_, Some(note)) => note.clone(),
        (Some(fs), None) => fs.kind.to_string(),
        (None, None) => "-".into(),
    }
}

fn dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

pub fn human(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!("Image:  {}\n", r.image));
    out.push_str(&format!(
        "Size:   {} bytes ({})\n",
        r.size,
        human_size(r.size)
    ));
    if !r.layers.is_empty() {
        let chain: Vec<String> = r
            .layers
            .iter()
            .map(|l| match &l.detail {
                Some(d) => format!("{} ({d})", l.format),
                None => l.format.clone(),
            })
            .collect();
        out.push_str(&format!("Layers: {} → raw disk\n", chain.join(" → ")));
    }
    if r.scheme == "none" {
        out.push_str("Table:  none (a bare filesystem)\n");
    } else {
        out.push_str(&format!(
            "Table:  {}, {}-byte sectors, disk id {}\n",
            r.scheme,
            r.sector_size,
            dash(r.disk_id.as_deref())
        ));
    }
    out.push_str(&format!(
        "Mount:  sandboxed: {}\n",
        imgmount::sandbox::summary()
    ));
    out.push('\n');

    let header = [
        "#",
        "START",
        "SIZE",
        "",
        "TYPE",
        "FLAGS",
        "NAME",
        "PART-UUID",
        "FILESYSTEM",
        "LABEL",
        "UUID",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for v in &r.volumes {
        let mut flags = Vec::new();
        if v.bootable {
            flags.push("boot");
        }
        if v.logical {
            flags.push("logical");
        }
        rows.push(vec![
            v.index.map_or_else(|| "-".into(), |n| n.to_string()),
            v.start.to_string(),
            v.size.to_string(),
            format!("({})", human_size(v.size)),
            type_cell(v),
            dash(Some(&flags.join(","))),
            dash(v.name.as_deref()),
            dash(v.uuid.as_deref()),
            fs_cell(v),
            dash(v.filesystem.as_ref().and_then(|f| f.label.as_deref())),
            dash(v.filesystem.as_ref().and_then(|f| f.uuid.as_deref())),
        ]);
    }
    if r.volumes.is_empty() {
        out.push_str("(no partitions)\n");
        rows.clear();
    }
    // Columns that say nothing for this image (no GPT names, no flags) are left out.
    let ncols = header.len();
    let keep: Vec<bool> = (0..ncols)
        .map(|c| rows.iter().skip(1).any(|row| row[c] != "-"))
        .collect();
    let widths: Vec<usize> = (0..ncols)
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let right_aligned = [
        false, true, true, false, false, false, false, false, false, false, false,
    ];
    for row in &rows {
        let mut line = String::new();
        for c in (0..ncols).filter(|&c| keep[c]) {
            let cell = &row[c];
            let pad = widths[c] - cell.chars().count();
            if !line.is_empty() {
                line.push_str("  ");
            }
            if right_aligned[c] {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    // Notes on readable filesystems (an ISO's El Torito boot images) have no column.
    for v in &r.volumes {
        if let (Some(fs), Some(note)) = (&v.filesystem, &v.note) {
            if fs.supported {
                let at = v
                    .index
                    .map_or_else(|| "the whole image".into(), |n| format!("partition {n}"));
                out.push_str(&format!("\n{at}: {note}\n"));
            }
        }
    }
    if !r.warnings.is_empty() {
        out.push_str("\nWarnings:\n");
        for w in &r.warnings {
            out.push_str(&format!("  - {w}\n"));
        }
    }
    out
}

fn type_cell(v: &VolumeReport) -> String {
    match (&v.type_code, v.type_name) {
        (None, _) => "-".into(),
        // MBR codes are short enough to show beside the name; GPT GUIDs only when unnamed.
        (Some(code), Some(name)) if code.starts_with("0x") => format!("{code} {name}"),
        (Some(_), Some(name)) => name.to_string(),
        (Some(code), None) => code.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(36 << 20), "36 MiB");
    }
}
