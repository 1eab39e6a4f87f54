//! The graph page: tasks and the links between them (a follow-up's or a
//! subtask's `parent`, `after` dependencies), laid out in layers and drawn
//! as SVG, each node coloured by its state.
//!
//! Only a bounded set of task files is read: the recent window (the newest
//! tasks of every state) or the neighbourhood of one task, never the whole
//! tree. The layout itself ([`place`]) is pure.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::Serialize;

use crate::tree::fsx;
use crate::tree::layout::{Layout, State};

use super::index::Index;
use super::view::Snapshot;

/// Most nodes drawn.
pub const MAX_NODES: usize = 200;
/// Newest tasks read to find links when no task is in focus.
const WINDOW: usize = 150;
/// Nodes per row of a layer before the layer wraps.
const ROW: usize = 8;

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum EdgeKind {
    /// `from` is the `parent` of `to` (a follow-up or a subtask).
    Parent,
    /// `to` runs `after` `from`.
    After,
}

#[derive(Debug, Serialize, Clone)]
pub struct Node {
    pub name: String,
    /// None: named by a link, but no state directory holds it.
    pub state: Option<State>,
    pub layer: usize,
    pub x: u32,
    pub y: u32,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub kind: EdgeKind,
}

/// `/graph` and `/api/graph`.
#[derive(Debug, Serialize)]
pub struct Graph {
    pub focus: Option<String>,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// More tasks were linked than [`MAX_NODES`].
    pub truncated: bool,
    pub width: u32,
    pub height: u32,
}

pub const NODE_W: u32 = 180;
pub const NODE_H: u32 = 28;
const GAP_X: u32 = 24;
const GAP_Y: u32 = 56;
const MARGIN: u32 = 16;

/// A task's outgoing links, from its own files.
fn links(layout: &Layout, name: &str, state: Option<State>, snap: &Snapshot) -> Vec<Edge> {
    let mut out = Vec::new();
    let Some(state) = state else {
        return out;
    };
    let Some((path, ext)) = layout.find(state, name) else {
        return out;
    };
    if let Some(t) = crate::tree::books::parsed_task(&path, name, ext, 1024 * 1024) {
        if let Some(p) = &t.parent {
            out.push(Edge {
                from: p.clone(),
                to: name.to_owned(),
                kind: EdgeKind::Parent,
            });
        }
        for d in &t.after {
            out.push(Edge {
                from: d.clone(),
                to: name.to_owned(),
                kind: EdgeKind::After,
            });
        }
    }
    // Children a record or state file names, and subtasks by their names.
    let rec: Option<crate::model::record::ResultRecord> =
        matches!(state, State::Completed | State::Failed)
            .then(|| fsx::read_task_file(&layout.record_file(state, name), 1024 * 1024).ok())
            .flatten()
            .and_then(|(b, _)| serde_json::from_slice(&b).ok());
    let mut kids: Vec<String> = rec
        .map(|r| r.followups.into_iter().chain(r.children).collect())
        .unwrap_or_default();
    let prefix = format!("{name}.");
    for (_, l) in &snap.lists {
        kids.extend(
            l.entries
                .iter()
                .filter(|e| {
                    e.name
                        .strip_prefix(&prefix)
                        .is_some_and(|r| !r.contains('.'))
                })
                .map(|e| e.name.clone()),
        );
    }
    for k in kids {
        out.push(Edge {
            from: name.to_owned(),
            to: k,
            kind: EdgeKind::Parent,
        });
    }
    out
}

/// The newest tasks of all states, newest first.
fn window(snap: &Snapshot) -> Vec<(State, &super::index::Entry)> {
    let mut w: Vec<(State, &super::index::Entry)> = snap
        .lists
        .iter()
        .flat_map(|(s, l)| l.entries.iter().take(WINDOW).map(move |e| (*s, e)))
        .collect();
    w.sort_by_key(|e| std::cmp::Reverse(e.1.mtime));
    w.truncate(WINDOW);
    w
}

/// Links that point at `name` from the newest tasks: children that name it
/// as their `parent` only in their own file, and tasks that run `after` it.
pub fn referrers(snap: &Snapshot, layout: &Layout, name: &str) -> Vec<Edge> {
    window(snap)
        .into_iter()
        .filter(|(_, e)| e.name != name)
        .flat_map(|(s, e)| links(layout, &e.name, Some(s), snap))
        .filter(|e| e.from == name)
        .collect()
}

/// The graph around `focus` (its tree of parents, children and
/// dependencies), or of the newest tasks.
pub fn graph(index: &Index, layout: &Layout, focus: Option<&str>) -> Graph {
    let snap = Snapshot::take(index, layout);
    let mut state: HashMap<String, Option<State>> = HashMap::new();
    let mut locate = |n: &str| -> Option<State> {
        *state
            .entry(n.to_owned())
            .or_insert_with(|| layout.locate(n).map(|(s, _, _)| s))
    };
    let window = window(&snap);
    // Every task read so far, with its outgoing links.
    let mut known: BTreeMap<String, Vec<Edge>> = window
        .iter()
        .map(|(s, e)| (e.name.clone(), links(layout, &e.name, Some(*s), &snap)))
        .collect();
    let mut nodes: BTreeSet<String> = match focus {
        Some(f) => BTreeSet::from([f.to_owned()]),
        None => window.iter().map(|(_, e)| e.name.clone()).collect(),
    };
    let mut truncated = false;
    loop {
        if focus.is_some() {
            let todo: Vec<String> = nodes
                .iter()
                .filter(|n| !known.contains_key(*n))
                .cloned()
                .collect();
            for n in todo {
                let st = locate(&n);
                let l = links(layout, &n, st, &snap);
                known.insert(n, l);
            }
        }
        let mut added = false;
        for (owner, es) in &known {
            // Without a focus, only the window's own links are followed, one step.
            if focus.is_none() && !nodes.contains(owner) {
                continue;
            }
            for e in es {
                if !nodes.contains(&e.from) && !nodes.contains(&e.to) {
                    continue;
                }
                for end in [&e.from, &e.to] {
                    if nodes.contains(end) {
                        continue;
                    }
                    if nodes.len() >= MAX_NODES {
                        truncated = true;
                        continue;
                    }
                    nodes.insert(end.clone());
                    added = true;
                }
            }
        }
        // With a focus, follow the whole connected tree.
        if !added || focus.is_none() {
            break;
        }
    }
    let edges: BTreeSet<Edge> = known
        .values()
        .flatten()
        .filter(|e| nodes.contains(&e.from) && nodes.contains(&e.to))
        .cloned()
        .collect();
    let states: BTreeMap<String, Option<State>> =
        nodes.iter().map(|n| (n.clone(), locate(n))).collect();
    let edges: Vec<Edge> = edges.into_iter().collect();
    let (placed, width, height) = place(&states, &edges);
    Graph {
        focus: focus.map(str::to_owned),
        nodes: placed,
        edges,
        truncated,
        width,
        height,
    }
}

/// Layers by longest path from the sources (a node sits one layer below
/// every task it follows), rows of at most `ROW` (8) nodes, ordered within a
/// layer by where their predecessors sit. Nodes on a cycle go last.
pub fn place(states: &BTreeMap<String, Option<State>>, edges: &[Edge]) -> (Vec<Node>, u32, u32) {
    let names: Vec<&String> = states.keys().collect();
    let idx: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let n = names.len();
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in edges {
        if let (Some(&a), Some(&b)) = (idx.get(e.from.as_str()), idx.get(e.to.as_str()))
            && a != b
        {
            preds[b].push(a);
            succs[a].push(b);
        }
    }
    // Kahn's order; the layer of a node is 1 + the deepest predecessor.
    let mut indeg: Vec<usize> = preds.iter().map(Vec::len).collect();
    let mut layer = vec![0usize; n];
    let mut q: VecDeque<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut done = vec![false; n];
    while let Some(i) = q.pop_front() {
        done[i] = true;
        for &s in &succs[i] {
            layer[s] = layer[s].max(layer[i] + 1);
            indeg[s] -= 1;
            if indeg[s] == 0 {
                q.push_back(s);
            }
        }
    }
    let deepest = layer.iter().copied().max().unwrap_or(0);
    for i in 0..n {
        if !done[i] {
            layer[i] = deepest + 1;
        }
    }
    let layers = layer.iter().copied().max().map_or(0, |m| m + 1);
    let mut by_layer: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for i in 0..n {
        by_layer[layer[i]].push(i);
    }
    let mut xpos = vec![0f64; n];
    let mut nodes = Vec::with_capacity(n);
    let mut y = MARGIN;
    let mut width = 0u32;
    for members in &mut by_layer {
        // Barycentre of the predecessors' positions, then the name.
        let key = |i: usize| -> f64 {
            if preds[i].is_empty() {
                f64::MAX
            } else {
                preds[i].iter().map(|&p| xpos[p]).sum::<f64>() / preds[i].len() as f64
            }
        };
        members.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(names[a].cmp(names[b])));
        for row in members.chunks(ROW) {
            for (col, &i) in row.iter().enumerate() {
                let x = MARGIN + col as u32 * (NODE_W + GAP_X);
                xpos[i] = x as f64;
                width = width.max(x + NODE_W + MARGIN);
                nodes.push(Node {
                    name: names[i].clone(),
                    state: states[names[i]],
                    layer: layer[i],
                    x,
                    y,
                });
            }
            y += NODE_H + GAP_Y / 2;
        }
        y += GAP_Y / 2;
    }
    (nodes, width.max(2 * MARGIN), y.max(2 * MARGIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(from: &str, to: &str) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            kind: EdgeKind::After,
        }
    }

    #[test]
    fn a_node_sits_below_every_task_it_follows_and_a_cycle_does_not_hang() {
        let states: BTreeMap<String, Option<State>> = ["a", "b", "c", "x", "y"]
            .iter()
            .map(|n| (n.to_string(), Some(State::Pending)))
            .collect();
        let edges = [
            e("a", "b"),
            e("b", "c"),
            e("a", "c"),
            e("x", "y"),
            e("y", "x"),
        ];
        let (nodes, _, _) = place(&states, &edges);
        let layer = |n: &str| nodes.iter().find(|x| x.name == n).unwrap().layer;
        assert_eq!((layer("a"), layer("b"), layer("c")), (0, 1, 2));
        assert!(layer("x") > layer("c") && layer("y") > layer("c"));
        assert_eq!(nodes.len(), 5);
    }

    #[test]
    fn a_wide_layer_wraps_into_rows() {
        let states: BTreeMap<String, Option<State>> = (0..20)
            .map(|i| (format!("t{i:02}"), Some(State::Completed)))
            .collect();
        let (nodes, w, _) = place(&states, &[]);
        let rows: BTreeSet<u32> = nodes.iter().map(|n| n.y).collect();
        assert_eq!(rows.len(), 3);
        assert!(w <= MARGIN * 2 + ROW as u32 * (NODE_W + GAP_X));
    }
}
