//! `amdimctl plot JOB|URI... --out curves.png`: the loss and the online
//! heads' test accuracy of one or several runs against step or training
//! time, on shared axes, one colour per run and a legend naming each, drawn
//! with plotters into a PNG. Text needs a TrueType font file read at run
//! time (`--font`, else a few usual system paths); without one it fails and
//! says so. Drawing only: the histories come from `ctl::history`.

use amdim_shared::history::HistoryRecord;
use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What the horizontal axis counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XAxis {
    /// Optimizer steps.
    Step,
    /// Minutes of training since the run's first start.
    Time,
}

/// The flags of `amdimctl plot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Job ids (the coordinator gives their checkpoint.uri) or checkpoint URIs.
    #[arg(value_name = "JOB|URI", required = true)]
    pub targets: Vec<String>,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
    /// The horizontal axis.
    #[arg(long, value_enum, default_value = "step")]
    pub x: XAxis,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1200)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 900)]
    pub height: u32,
    /// A TrueType/OpenType font file for the text (default: DejaVu Sans or
    /// Liberation Sans where the system has them).
    #[arg(long, env = "AMDIM_PLOT_FONT")]
    pub font: Option<PathBuf>,
}

/// Fonts tried when no `--font` is given.
const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
];

/// Reads the font and registers it as plotters' sans-serif (once per process).
fn register_font(font: Option<&Path>) -> Result<()> {
    let path = match font {
        Some(p) => p.to_path_buf(),
        None => FONT_CANDIDATES.iter().map(PathBuf::from).find(|p| p.exists()).ok_or_else(|| {
            anyhow!(
                "no font for the plot's text: pass --font FILE.ttf (or AMDIM_PLOT_FONT); on Debian `apt-get install fonts-dejavu-core` provides {}",
                FONT_CANDIDATES[0]
            )
        })?,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading the font {}", path.display()))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{}: not a TrueType/OpenType font", path.display()))
}

/// One run to draw: its label and its records.
pub struct Run {
    /// The legend's name for it.
    pub label: String,
    /// Its history.
    pub records: Vec<HistoryRecord>,
}

/// The colour of the `i`-th run (distinct, readable on white).
fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
    ];
    PALETTE[i % PALETTE.len()]
}

/// The (x, y) points of one series.
type Points = Vec<(f64, f64)>;

/// Per run: loss, online linear accuracy, online MLP accuracy (in %).
fn series(run: &Run, x: XAxis) -> (Points, Points, Points) {
    let at = |step: u64, elapsed_s: f64| match x {
        XAxis::Step => step as f64,
        XAxis::Time => elapsed_s / 60.0,
    };
    let (mut loss, mut lin, mut mlp) = (Vec::new(), Vec::new(), Vec::new());
    for r in &run.records {
        match r {
            HistoryRecord::Step(s) if s.loss.is_finite() => loss.push((at(s.step, s.elapsed_s), s.loss)),
            HistoryRecord::Step(_) => {}
            HistoryRecord::Eval(e) => {
                lin.push((at(e.step, e.elapsed_s), 100.0 * e.linear_accuracy));
                mlp.push((at(e.step, e.elapsed_s), 100.0 * e.mlp_accuracy));
            }
        }
    }
    (loss, lin, mlp)
}

/// The range covering every value, padded by 5 % (at least ±`min_pad`).
fn span(values: impl Iterator<Item = f64>, min_pad: f64) -> Option<Range<f64>> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return None;
    }
    let pad = ((hi - lo) * 0.05).max(min_pad);
    Some(lo - pad..hi + pad)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// How one panel is labelled.
struct Labels<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    /// Decimals of the x tick labels.
    x_decimals: usize,
    /// Where the legend goes (where the curves are not, usually).
    legend_at: SeriesLabelPosition,
}

/// Draws one panel: `lines` are (run index, series label, points, dashed).
fn panel(area: &Area<'_>, labels: Labels<'_>, xs: Range<f64>, lines: &[(usize, String, &Points, bool)]) -> Result<()> {
    let Labels {
        title,
        x_desc,
        y_desc,
        x_decimals,
        legend_at,
    } = labels;
    let ys = span(lines.iter().flat_map(|(_, _, p, _)| p.iter().map(|&(_, y)| y)), 0.5);
    let Some(ys) = ys else {
        area.titled(&format!("{title}: no data in these runs"), ("sans-serif", 24))
            .map_err(|e| anyhow!("drawing: {e}"))?;
        return Ok(());
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(xs, ys)
        .map_err(|e| anyhow!("drawing: {e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.x_decimals$}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| anyhow!("drawing: {e}"))?;
    for (i, label, points, dashed) in lines {
        let style = colour(*i).stroke_width(if *dashed { 2 } else { 3 });
        let drawn = if *dashed {
            chart.draw_series(DashedLineSeries::new(points.iter().copied(), 8, 6, style))
        } else {
            chart.draw_series(LineSeries::new(points.iter().copied(), style))
        };
        let legend = colour(*i).stroke_width(3);
        drawn
            .map_err(|e| anyhow!("drawing: {e}"))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], legend));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.5))
        .position(legend_at)
        .draw()
        .map_err(|e| anyhow!("drawing: {e}"))?;
    Ok(())
}

/// Draws the curves of `runs` into an RGB image of `width` × `height`.
fn draw(runs: &[Run], x: XAxis, width: u32, height: u32) -> Result<Vec<u8>> {
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    let data: Vec<_> = runs.iter().map(|r| series(r, x)).collect();
    let xs = span(data.iter().flat_map(|(l, a, _)| l.iter().chain(a).map(|&(x, _)| x)), 0.5).unwrap_or(0.0..1.0);
    let (x_desc, x_decimals) = match x {
        XAxis::Step => ("step", 0),
        XAxis::Time => ("training time (minutes)", 1),
    };
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("drawing: {e}"))?;
        let (top, bottom) = root.split_vertically(height / 2);
        let losses: Vec<_> = data
            .iter()
            .enumerate()
            .map(|(i, (l, _, _))| (i, runs[i].label.clone(), l, false))
            .collect();
        let loss_labels = Labels {
            title: "Training loss",
            x_desc,
            y_desc: "loss",
            x_decimals,
            legend_at: SeriesLabelPosition::UpperRight,
        };
        panel(&top, loss_labels, xs.clone(), &losses)?;
        let mut acc = Vec::new();
        for (i, (_, lin, mlp)) in data.iter().enumerate() {
            acc.push((i, format!("{} linear", runs[i].label), lin, false));
            acc.push((i, format!("{} MLP (dashed)", runs[i].label), mlp, true));
        }
        let acc_labels = Labels {
            title: "Online heads' test accuracy (live signal; the real figure is `amdimctl probe`)",
            x_desc,
            y_desc: "accuracy (%)",
            x_decimals,
            legend_at: SeriesLabelPosition::LowerRight,
        };
        panel(&bottom, acc_labels, xs, &acc)?;
        root.present().map_err(|e| anyhow!("drawing: {e}"))?;
    }
    Ok(pixels)
}

/// Writes `pixels` (RGB) as a PNG at `path`.
fn write_png(path: &Path, pixels: &[u8], width: u32, height: u32) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().with_context(|| format!("writing {}", path.display()))?;
    writer
        .write_image_data(pixels)
        .with_context(|| format!("writing {}", path.display()))?;
    writer.finish().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Draws `runs` as `args` asks and writes the PNG.
pub fn plot(runs: &[Run], args: &Args) -> Result<()> {
    if !(200..=8000).contains(&args.width) || !(200..=8000).contains(&args.height) {
        bail!("--width and --height must be between 200 and 8000 pixels");
    }
    register_font(args.font.as_deref())?;
    let pixels = draw(runs, args.x, args.width, args.height)?;
    write_png(&args.out, &pixels, args.width, args.height)
}

/// `amdimctl plot`: loads each target's history (a job id through
/// `client`, which is needed when any target is one) and writes the PNG.
pub async fn run(client: Option<crate::ctl::jobs::Client>, args: Args) -> Result<()> {
    let mut runs = Vec::new();
    for target in &args.targets {
        let uri = match &client {
            Some(c) if is_job(target) => crate::ctl::jobs::checkpoint_uri(c.clone(), target).await?,
            _ => target.clone(),
        };
        let records = crate::ctl::history::load(&uri).await?;
        runs.push(Run {
            label: crate::ctl::history::run_label(target),
            records,
        });
    }
    plot(&runs, &args)?;
    println!("{}", args.out.display());
    Ok(())
}

/// Whether `target` names a job rather than a checkpoint location.
pub fn is_job(target: &str) -> bool {
    crate::ctl::jobs::is_job_id(target) && !Path::new(target).exists()
}
