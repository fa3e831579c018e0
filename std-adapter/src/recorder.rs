//! Routing traces on disk: a recorder that runtimes call once per step, writing the core's
//! trace format (see [`expertslab::trace`]), and a reader.

use std::io::Write;
use std::path::Path;

use expertslab::trace::{RecordLine, Trace, TraceFile, TraceHeader, TraceWriter};

use crate::capture::RoutingCapture;
use crate::error::Error;

/// Writes a routing trace: the header when created, then each step's captured ids, one line
/// per layer that has ids, and the end record when finished (a run that stops before
/// [`TraceRecorder::finish`] leaves a trace that readers report as unsealed).
#[derive(Debug)]
pub struct TraceRecorder<W: Write> {
    out: W,
    header: TraceHeader,
    writer: TraceWriter,
    line: String,
}

impl<W: Write> TraceRecorder<W> {
    /// Starts a trace of the given shape on `out`.
    ///
    /// # Errors
    /// The writer's error.
    pub fn new(mut out: W, header: TraceHeader) -> std::io::Result<Self> {
        let mut line = String::new();
        let writer =
            TraceWriter::start(&mut line, header).map_err(|_| std::io::Error::other("formatting the header"))?;
        out.write_all(line.as_bytes())?;
        Ok(Self { out, header, writer, line })
    }

    /// Appends step `step`: one line for each layer with ids in `capture`.
    ///
    /// # Errors
    /// [`std::io::ErrorKind::InvalidInput`] when a layer with ids is at or past the header's layer
    /// count (nothing of the step is written then); otherwise the writer's error.
    pub fn record(&mut self, step: u64, prefill: bool, capture: &RoutingCapture) -> std::io::Result<()> {
        let layers = self.header.layers as usize;
        if let Some(layer) = capture.layers().find(|&l| l >= layers) {
            let message = format!("layer {layer} is past the trace header's {layers} layers");
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, message));
        }
        for layer in capture.layers() {
            self.line.clear();
            // layer < header.layers, a u32.
            self.writer
                .record(
                    &mut self.line,
                    &RecordLine { layer: layer as u32, step, prefill, ids: capture.ids(layer), weights: None },
                )
                .map_err(|_| std::io::Error::other("formatting a record"))?;
            self.out.write_all(self.line.as_bytes())?;
        }
        Ok(())
    }

    /// Writes the end record, flushes and gives the writer back.
    ///
    /// # Errors
    /// The writer's error.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.line.clear();
        self.writer.finish(&mut self.line).map_err(|_| std::io::Error::other("formatting the end record"))?;
        self.out.write_all(self.line.as_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a routing trace file, and what its text says of itself: its version, and whether it
/// ended with an end record that matched ([`TraceFile::sealed`]).
///
/// # Errors
/// [`Error::Io`] naming the path, or [`Error::Trace`] naming the bad line.
pub fn read_trace(path: impl AsRef<Path>) -> Result<(Trace, TraceFile), Error> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    Trace::read(&text).map_err(Error::Trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_steps_read_back() {
        let header = TraceHeader { experts: 16, layers: 3, top_k: 2 };
        let mut recorder = TraceRecorder::new(Vec::new(), header).unwrap();
        let mut capture = RoutingCapture::new();
        capture.record(0, &[1, 2]);
        capture.record(2, &[3, 4, 5, 6]);
        recorder.record(0, true, &capture).unwrap();
        capture.clear();
        capture.record_f32(1, &[7.0, 8.0]).unwrap();
        recorder.record(1, false, &capture).unwrap();
        capture.record(3, &[1, 2]);
        assert_eq!(recorder.record(2, false, &capture).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
        let bytes = recorder.finish().unwrap();
        let (trace, file) = Trace::read(std::str::from_utf8(&bytes).unwrap()).unwrap();
        assert!(file.sealed, "a finished recording ends with its end record");
        assert_eq!(trace.header(), header);
        let lines: Vec<(u32, u64, bool, Vec<u32>)> =
            trace.records().iter().map(|r| (r.layer, r.step, r.prefill, trace.ids(r).to_vec())).collect();
        assert_eq!(lines, [(0, 0, true, vec![1, 2]), (2, 0, true, vec![3, 4, 5, 6]), (1, 1, false, vec![7, 8])]);
    }

    #[test]
    #[cfg_attr(miri, ignore = "touches the file system")]
    fn unreadable_traces_name_the_path_or_line() {
        let err = read_trace("/nonexistent/trace.ndjson").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/trace.ndjson"));
        let path = std::env::temp_dir().join(format!("expertslab-trace-{}.ndjson", std::process::id()));
        std::fs::write(
            &path,
            "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":4,\"layers\":1,\"top_k\":1}\n{\"layer\":0}\n",
        )
        .unwrap();
        let err = read_trace(&path).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        std::fs::remove_file(path).unwrap();
    }
}
