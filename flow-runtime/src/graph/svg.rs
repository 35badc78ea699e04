//! An SVG picture of a [`StateGraph`], laid out in-process by `layout-rs`
//! (see the module docs of [`crate::graph`] for why that crate).
//!
//! Every state's group carries `class="flow-state"` and
//! `data-state="NAME"`, and the highlighted one also the class `current`,
//! so a page can style or find them (`g.flow-state.current`) without
//! parsing the picture.

use super::dot::{HIGHLIGHT_FILL, HIGHLIGHT_LINE};
use super::{State, StateGraph, StateKind};
use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;
use std::collections::HashMap;

/// The font size of every text this module draws.
const FONT_SIZE: usize = 14;
/// Fill of `Start` and `Done`.
const END_FILL: &str = "#e8eef6";
/// Fill of a state waiting on a sub-flow.
const SUB_FLOW_FILL: &str = "#f3f0fa";

impl StateGraph {
    /// The graph as a standalone SVG picture (`<svg ...>...</svg>`, no XML
    /// declaration, so it also embeds in an HTML page as is): one box per
    /// state with its name and stored fields, one arrow per transition
    /// labelled with its conditions and the operation awaited next, a
    /// sub-flow state as a box that nests the child's states.
    ///
    /// `highlight` names a state to draw filled and with a thick border
    /// (its group also gets the class `current`); an unknown name
    /// highlights nothing. The same graph always gives the same bytes.
    pub fn to_svg(&self, highlight: Option<&str>) -> String {
        // The layout library asserts on its invariants; a graph it cannot
        // lay out must not take down the caller (a dashboard request).
        let drawn =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| draw(self, highlight)));
        match drawn {
            Ok(svg) => svg,
            Err(_) => format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"400\" height=\"40\"><text x=\"10\" y=\"25\">cannot draw the state graph of {}</text></svg>",
                xml_escape(self.flow)
            ),
        }
    }
}

fn draw(graph: &StateGraph, highlight: Option<&str>) -> String {
    let dir = Orientation::TopToBottom;
    let mut vg = VisualGraph::new(dir);
    let mut handles = HashMap::new();
    let mut boxes = HashMap::new();
    for state in graph.states {
        let lit = highlight == Some(state.name);
        let drawn = StateBox::of(graph, state);
        let shape = ShapeKind::new_box(&drawn.lines.join("\n"));
        let fill = match (lit, state.kind, drawn.nested.is_some()) {
            (true, _, _) => HIGHLIGHT_FILL,
            (false, StateKind::Start | StateKind::Done, _) => END_FILL,
            (false, StateKind::Suspended, true) => SUB_FLOW_FILL,
            (false, StateKind::Suspended, false) => "#ffffff",
        };
        let (line, width) = if lit {
            (HIGHLIGHT_LINE, 3)
        } else {
            ("#333333", 1)
        };
        let look = StyleAttr::new(
            Color::fast(line),
            width,
            Some(Color::fast(fill)),
            8,
            FONT_SIZE,
        );
        let size = drawn.size();
        let class = if lit {
            "flow-state current"
        } else {
            "flow-state"
        };
        let properties = format!(
            "class=\"{class}\" data-state=\"{}\"",
            xml_escape(state.name)
        );
        let element = Element::create_with_properties(shape, look, dir, size, properties.clone());
        handles.insert(state.name, vg.add_node(element));
        boxes.insert(properties, drawn);
    }
    for t in graph.transitions {
        let (Some(from), Some(to)) = (handles.get(t.from), handles.get(t.to)) else {
            continue;
        };
        let mut arrow = Arrow::simple(&graph.label(t).join("\n"));
        arrow.look = StyleAttr::new(Color::fast("#555555"), 1, None, 0, FONT_SIZE);
        vg.add_edge(arrow, *from, *to);
    }
    let mut painter = Painter {
        svg: SVGWriter::new(),
        boxes,
        bounds: None,
    };
    vg.do_it(false, false, false, &mut painter);
    painter.finish()
}

/// A line with no text that still takes its height (an empty `tspan`
/// would not move the next line down).
const BLANK: &str = "\u{a0}";
/// Width of a character, as a share of the font size (sans-serif).
const CHAR_WIDTH: f64 = 0.62;

/// The text of a state's box, a line each: its name, a blank line (the
/// rule under the name goes there), for a sub-flow the child's title and
/// states, then its stored fields.
struct StateBox {
    lines: Vec<String>,
    /// The lines (first, count) that list a sub-flow, boxed in the box.
    nested: Option<(usize, usize)>,
}

impl StateBox {
    fn of(graph: &StateGraph, state: &State) -> Self {
        let mut lines = vec![state.name.to_owned()];
        let mut nested = None;
        let fields = graph.field_lines(state);
        let child = state.sub_flow.filter(|c| !c.states.is_empty());
        if child.is_some() || !fields.is_empty() {
            lines.push(BLANK.to_owned());
        }
        if let Some(child) = child {
            nested = Some((lines.len(), child.states.len() + 1));
            lines.push(format!("sub-flow {}", child.title));
            // A grandchild is named, not drawn (the DOT and Mermaid texts
            // nest every level).
            lines.extend(child.states.iter().map(|s| match s.sub_flow {
                Some(g) => format!("{} (sub-flow {})", s.name, g.title),
                None => s.name.to_owned(),
            }));
            if !fields.is_empty() {
                lines.push(BLANK.to_owned());
            }
        }
        lines.extend(fields);
        StateBox { lines, nested }
    }

    /// The box's size: the text with a margin (the layout's own estimate
    /// takes every character as wide as the font is high).
    fn size(&self) -> Point {
        let font = FONT_SIZE as f64;
        let widest = self
            .lines
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(1);
        let nested_margin = if self.nested.is_some() { 2. * font } else { 0. };
        Point::new(
            widest as f64 * font * CHAR_WIDTH + 2. * font + nested_margin,
            (self.lines.len() as f64 + 1.) * font,
        )
    }
}

/// The SVG writer, plus what `layout-rs` cannot draw in a box: a rule
/// under the state's name and a box around a sub-flow's states. A state's
/// box is recognised by its properties (they name the state).
struct Painter {
    svg: SVGWriter,
    boxes: HashMap<String, StateBox>,
    /// What was drawn: (top left, bottom right), for the picture's size
    /// (the writer's own guess leaves long labels out and adds empty
    /// space below).
    bounds: Option<(Point, Point)>,
}

impl Painter {
    fn grow(&mut self, from: Point, to: Point) {
        let (lo, hi) = self.bounds.get_or_insert((from, to));
        *lo = Point::new(lo.x.min(from.x).min(to.x), lo.y.min(from.y).min(to.y));
        *hi = Point::new(hi.x.max(from.x).max(to.x), hi.y.max(from.y).max(to.y));
    }

    /// The SVG, sized to what was drawn, in a sans-serif font, without
    /// the XML declaration (so that it embeds in HTML as is).
    fn finish(self) -> String {
        let text = sorted_styles(&self.svg.finalize().replace(
            "font-family: Times, serif;",
            "font-family: Helvetica, Arial, sans-serif;",
        ));
        let Some(start) = text.find("<svg") else {
            return text;
        };
        let Some(end) = text[start..].find('>').map(|e| start + e + 1) else {
            return text;
        };
        let margin = FONT_SIZE as f64;
        let (lo, hi) = self.bounds.unwrap_or((Point::zero(), Point::zero()));
        let (x, y) = ((lo.x - margin).floor(), (lo.y - margin).floor());
        let (w, h) = ((hi.x + margin).ceil() - x, (hi.y + margin).ceil() - y);
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"flow-graph\" width=\"{w}\" height=\"{h}\" viewBox=\"{x} {y} {w} {h}\">{}",
            &text[end..]
        )
    }
}

impl RenderBackend for Painter {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        look: &StyleAttr,
        properties: Option<String>,
        clip: Option<ClipHandle>,
    ) {
        let drawn = properties.as_ref().and_then(|p| self.boxes.get(p));
        let extra = drawn.map(|b| (b.lines.len(), b.nested));
        self.grow(xy, xy.add(size));
        self.svg.draw_rect(xy, size, look, properties, clip);
        let Some((count, nested)) = extra else {
            return;
        };
        // `draw_text` centres the block of lines in the box, one `1em`
        // line each: line k is centred at `top + (k + 1) * font`.
        let font = FONT_SIZE as f64;
        let centre_y = xy.y + size.y / 2.;
        let top = centre_y - (count as f64 + 1.) * font / 2.;
        let line_top = |k: usize| top + (k as f64 + 0.5) * font;
        let thin = StyleAttr::new(look.line_color, 1, None, 0, FONT_SIZE);
        if count > 1 {
            let y = line_top(1) + font / 2.;
            self.svg.draw_line(
                Point::new(xy.x, y),
                Point::new(xy.x + size.x, y),
                &thin,
                None,
            );
        }
        if let Some((first, lines)) = nested {
            let inset = font;
            let nested_look = StyleAttr::new(
                look.line_color,
                1,
                Some(Color::fast("#ffffff")),
                6,
                FONT_SIZE,
            );
            self.svg.draw_rect(
                Point::new(xy.x + inset, line_top(first) - font / 4.),
                Point::new(size.x - 2. * inset, (lines as f64 + 0.5) * font),
                &nested_look,
                Some("class=\"flow-sub-flow\"".to_owned()),
                None,
            );
        }
    }

    fn draw_line(
        &mut self,
        start: Point,
        stop: Point,
        look: &StyleAttr,
        properties: Option<String>,
    ) {
        self.grow(start, stop);
        self.svg.draw_line(start, stop, look, properties);
    }

    fn draw_circle(
        &mut self,
        xy: Point,
        size: Point,
        look: &StyleAttr,
        properties: Option<String>,
    ) {
        let half = size.scale(0.5);
        self.grow(xy.sub(half), xy.add(half));
        self.svg.draw_circle(xy, size, look, properties);
    }

    fn draw_text(&mut self, xy: Point, text: &str, look: &StyleAttr) {
        // As the writer places it: centred on `xy`, one `1em` line each.
        let font = look.font_size as f64;
        let lines = text.lines().count() as f64;
        let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
        let half = Point::new(widest * font * CHAR_WIDTH / 2., (lines + 1.) * font / 2.);
        self.grow(xy.sub(half), xy.add(half));
        self.svg.draw_text(xy, text, look);
    }

    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        dashed: bool,
        head: (bool, bool),
        look: &StyleAttr,
        properties: Option<String>,
        text: &str,
    ) {
        for (a, b) in path {
            self.grow(*a, *b);
        }
        self.svg
            .draw_arrow(path, dashed, head, look, properties, text);
    }

    fn create_clip(&mut self, xy: Point, size: Point, rounded_px: usize) -> ClipHandle {
        self.svg.create_clip(xy, size, rounded_px)
    }
}

/// The SVG with the lines of its `<style>` block sorted: the writer lists
/// one class per font size from a hash map (the layout uses a second size
/// of its own for some edges), so their order would vary from run to run.
fn sorted_styles(svg: &str) -> String {
    let (Some(start), Some(end)) = (svg.find("<style>\n"), svg.find("</style>")) else {
        return svg.to_owned();
    };
    let body = start + "<style>\n".len();
    if end < body {
        return svg.to_owned();
    }
    let mut lines: Vec<&str> = svg[body..end].lines().collect();
    lines.sort_unstable();
    let mut out = String::with_capacity(svg.len());
    out.push_str(&svg[..body]);
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&svg[end..]);
    out
}

/// Escapes text for an XML attribute or text node.
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use crate::graph::fixtures::PARENT;

    #[test]
    fn every_state_is_drawn_and_tagged() {
        let svg = PARENT.to_svg(None);
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        for name in ["Start", "AwaitOffer", "SubFlowResolve", "Done"] {
            assert!(
                svg.contains(&format!("class=\"flow-state\" data-state=\"{name}\"")),
                "{name} in\n{svg}"
            );
        }
        // Text is escaped; the child's states are inside the sub-flow box.
        assert!(svg.contains("limit: Option&lt;u64&gt;"), "{svg}");
        assert!(svg.contains(">AwaitTxs<"), "{svg}");
        assert!(svg.contains("if offer &gt; &quot;limit&quot;"), "{svg}");
        assert!(!svg.contains("current"), "{svg}");
    }

    #[test]
    fn the_highlighted_state_has_the_current_class_and_the_output_is_stable() {
        let svg = PARENT.to_svg(Some("AwaitOffer"));
        assert_eq!(svg.matches("class=\"flow-state current\"").count(), 1);
        assert!(svg.contains("class=\"flow-state current\" data-state=\"AwaitOffer\""));
        assert_eq!(svg, PARENT.to_svg(Some("AwaitOffer")));
        assert_ne!(svg, PARENT.to_svg(None));
    }

    #[test]
    fn style_lines_are_sorted() {
        let svg = "<svg><style>\n.b { x }\n.a { y }\n</style><g/></svg>";
        assert_eq!(
            super::sorted_styles(svg),
            "<svg><style>\n.a { y }\n.b { x }\n</style><g/></svg>"
        );
    }
}
