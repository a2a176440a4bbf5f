//! Listing of ImageFolder trees (the ImageNet layout `<split>/<class>/<file>`
//! with `.jpg`, `.jpeg` or `.png` files): classes sorted by name and numbered
//! from 0, files ordered by (class, name), so sample i is the same file on
//! every machine. Shared by the worker (reading) and `amdimctl dataset pack`.

use std::path::{Path, PathBuf};

/// The files of one split and their class indices.
#[derive(Clone, Debug, PartialEq)]
pub struct Listing {
    /// Class folder names, sorted; label i is `classes[i]`.
    pub classes: Vec<String>,
    /// Every image, ordered by (class, name).
    pub files: Vec<PathBuf>,
    /// The class index of each file.
    pub labels: Vec<u32>,
}

/// Why a split cannot be listed; messages name the folder.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ListError {
    /// The folder (or file) at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

fn err(path: &Path, message: impl Into<String>) -> ListError {
    ListError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Whether `path` has an image extension (`.jpg`, `.jpeg`, `.png`, any case).
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, ListError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

/// Lists the split folder `dir`. A missing folder, one without class
/// folders, or without a single image is an error naming it.
pub fn list(dir: &Path) -> Result<Listing, ListError> {
    if !dir.is_dir() {
        return Err(err(dir, "not a folder (an ImageFolder split holds <class>/<image> files)"));
    }
    let class_dirs: Vec<PathBuf> = sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    if class_dirs.is_empty() {
        return Err(err(dir, "no class folders"));
    }
    let mut out = Listing {
        classes: Vec::with_capacity(class_dirs.len()),
        files: Vec::new(),
        labels: Vec::new(),
    };
    for (label, class_dir) in class_dirs.iter().enumerate() {
        out.classes
            .push(class_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        for file in sorted_entries(class_dir)?.into_iter().filter(|p| p.is_file() && is_image(p)) {
            out.files.push(file);
            out.labels.push(label as u32);
        }
    }
    if out.files.is_empty() {
        return Err(err(dir, "no .jpg, .jpeg or .png files in any class folder"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_files_are_sorted_and_non_images_ignored() {
        let root = std::env::temp_dir().join(format!("amdim-listing-{}", std::process::id()));
        for (class, file) in [
            ("zebra", "b.JPEG"),
            ("ant", "z.png"),
            ("ant", "a.jpg"),
            ("ant", "notes.txt"),
            ("zebra", "a.jpeg"),
        ] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            std::fs::write(root.join(class).join(file), b"x").unwrap();
        }
        let l = list(&root).unwrap();
        assert_eq!(l.classes, ["ant", "zebra"]);
        let names: Vec<_> = l.files.iter().map(|f| f.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["a.jpg", "z.png", "a.jpeg", "b.JPEG"]);
        assert_eq!(l.labels, [0, 0, 1, 1]);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(list(&root).unwrap_err().to_string().contains("not a folder"));
    }
}
