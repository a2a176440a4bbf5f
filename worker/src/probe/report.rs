//! What a probe reports: one row per feature set (a checkpoint's encoder,
//! raw pixels, a random encoder of the same shape) with its linear-probe and
//! k-NN test accuracy, plus the dataset and the recipe; and the table a
//! person reads. Formatting only.

use crate::probe::linear::Recipe;
use std::fmt::Write as _;

/// Which features a row probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    /// r1 of the encoder with the checkpoint's weights.
    Checkpoint,
    /// The evaluation views' pixels.
    Pixels,
    /// r1 of a randomly initialised encoder (job.seed, as training starts).
    Random,
}

impl RowKind {
    fn title(self) -> &'static str {
        match self {
            RowKind::Checkpoint => "trained encoder (r1)",
            RowKind::Pixels => "raw pixels",
            RowKind::Random => "random-init encoder (r1)",
        }
    }
}

/// One feature set's results; accuracies are top-1 in [0, 1].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub features: RowKind,
    /// Where the weights came from (checkpoint rows only).
    pub weights: Option<String>,
    pub dim: usize,
    pub linear_test: f64,
    pub linear_train: f64,
    /// None when k-NN was skipped (`--no-knn`).
    pub knn_test: Option<f64>,
    pub seconds: f64,
}

/// A whole probe: dataset, recipe, rows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub dataset: String,
    pub train_samples: usize,
    pub test_samples: usize,
    pub classes: usize,
    pub linear_recipe: Recipe,
    pub knn_k: usize,
    pub knn_vote: &'static str,
    pub rows: Vec<Row>,
}

fn percent(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

/// The table a person reads: one line per row, then the recipe.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Frozen-feature probe on {} ({} training, {} test images, {} classes)",
        r.dataset, r.train_samples, r.test_samples, r.classes
    );
    let _ = writeln!(
        out,
        "{:<26} {:>6} {:>13} {:>12} {:>13}",
        "features", "dim", "linear (test)", "k-NN (test)", "linear (train)"
    );
    for row in &r.rows {
        let knn = row.knn_test.map_or_else(|| "-".to_string(), percent);
        let _ = writeln!(
            out,
            "{:<26} {:>6} {:>13} {:>12} {:>13}",
            row.features.title(),
            row.dim,
            percent(row.linear_test),
            knn,
            percent(row.linear_train)
        );
    }
    for row in &r.rows {
        if let Some(w) = &row.weights {
            let _ = writeln!(out, "weights: {w}");
        }
    }
    let l = &r.linear_recipe;
    let _ = writeln!(
        out,
        "linear: standardised features, softmax regression, Adam lr {} cosine to 0, {} epochs, batch {}, L2 {}, seed {}; \
         k-NN: k = {}, cosine, {}",
        l.lr, l.epochs, l.batch_size, l.l2, l.seed, r.knn_k, r.knn_vote
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_every_row_and_the_recipe() {
        let row = |features, linear_test, knn_test| Row {
            features,
            weights: None,
            dim: 64,
            linear_test,
            linear_train: 0.9,
            knn_test,
            seconds: 1.0,
        };
        let r = Report {
            dataset: "idx /data".into(),
            train_samples: 600,
            test_samples: 100,
            classes: 10,
            linear_recipe: Recipe::default(),
            knn_k: 20,
            knn_vote: "weighted",
            rows: vec![row(RowKind::Checkpoint, 0.8812, Some(0.85)), row(RowKind::Pixels, 0.845, None)],
        };
        let t = table(&r);
        assert!(
            t.contains("trained encoder (r1)") && t.contains("88.12 %") && t.contains("85.00 %"),
            "{t}"
        );
        assert!(t.contains("raw pixels") && t.contains("84.50 %"), "{t}");
        assert!(t.contains("30 epochs, batch 256"), "{t}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rows"][1]["features"], "pixels");
    }
}
