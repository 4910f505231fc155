//! The step DAG: edges from each need to the step that needs it, a deterministic execution
//! order, and DOT / Mermaid renderings for `opsrunner graph`.

use fixedbitset::FixedBitSet;
use petgraph::graph::{DiGraph, NodeIndex};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<usize, ()>,
    /// Direct needs of each step, by step index.
    pub needs: Vec<Vec<usize>>,
    /// Steps that directly need each step.
    pub dependents: Vec<Vec<usize>>,
    /// A topological order; among steps that could go in either order, plan order wins, so
    /// previews read like the file.
    pub order: Vec<usize>,
}

impl Dag {
    /// Builds the DAG. Returns the steps of a cycle (first step repeated at the end) when
    /// there is one.
    pub fn build(needs: Vec<Vec<usize>>) -> Result<Dag, Vec<usize>> {
        let n = needs.len();
        let mut graph = DiGraph::with_capacity(n, n);
        let nodes: Vec<NodeIndex> = (0..n).map(|i| graph.add_node(i)).collect();
        let mut dependents = vec![Vec::new(); n];
        for (step, step_needs) in needs.iter().enumerate() {
            for &need in step_needs {
                graph.add_edge(nodes[need], nodes[step], ());
                dependents[need].push(step);
            }
        }
        if let Some(cycle) = find_cycle(&graph) {
            return Err(cycle);
        }
        let order = plan_ordered_toposort(&needs, &dependents);
        Ok(Dag {
            graph,
            needs,
            dependents,
            order,
        })
    }

    /// Every step `step` transitively needs. Walked on demand rather than kept for every
    /// step: a table of all pairs grows with the square of the plan (50,000 steps: 300 MB).
    pub fn upstream(&self, step: usize) -> Vec<usize> {
        let mut seen = FixedBitSet::with_capacity(self.needs.len());
        let mut stack: Vec<usize> = self.needs[step].clone();
        let mut out = Vec::new();
        while let Some(s) = stack.pop() {
            if seen.put(s) {
                continue;
            }
            out.push(s);
            stack.extend_from_slice(&self.needs[s]);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.needs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.needs.is_empty()
    }

    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// Graphviz DOT; `label(i)` describes step `i`. Destructive steps are red, edges into a
    /// step that runs on `failure()`, `always()` or `cancelled()` are dashed and labelled.
    pub fn to_dot(&self, name: &str, label: impl Fn(usize) -> NodeLabel) -> String {
        let mut out = format!(
            "digraph {} {{\n  rankdir=LR;\n  node [shape=box];\n",
            quote(name)
        );
        for &i in &self.order {
            let l = label(i);
            let style = if l.destructive {
                ", color=red, penwidth=2, fontcolor=red"
            } else {
                ""
            };
            let mark = if l.destructive { "\n(destructive)" } else { "" };
            out.push_str(&format!(
                "  {} [label={}{style}];\n",
                quote(&l.id),
                quote(&format!("{}\n({}){mark}", l.id, l.kind))
            ));
        }
        for &i in &self.order {
            let to = label(i);
            for &need in &self.needs[i] {
                let attrs = if to.condition == "success()" {
                    String::new()
                } else {
                    format!(" [style=dashed, label={}]", quote(&to.condition))
                };
                out.push_str(&format!(
                    "  {} -> {}{attrs};\n",
                    quote(&label(need).id),
                    quote(&to.id)
                ));
            }
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid flowchart, marked like [`Dag::to_dot`]: destructive steps in the
    /// `destructive` class, dotted and labelled edges into `failure()`/`always()` steps.
    pub fn to_mermaid(&self, label: impl Fn(usize) -> NodeLabel) -> String {
        let mut out = String::from("flowchart LR\n");
        let mut destructive = Vec::new();
        for &i in &self.order {
            let l = label(i);
            let mark = if l.destructive {
                destructive.push(format!("s{i}"));
                "<br/>⚠ destructive"
            } else {
                ""
            };
            out.push_str(&format!(
                "  s{i}[\"{}<br/>({}){mark}\"]\n",
                mermaid_text(&l.id),
                mermaid_text(&l.kind)
            ));
        }
        for &i in &self.order {
            let condition = label(i).condition;
            for &need in &self.needs[i] {
                if condition == "success()" {
                    out.push_str(&format!("  s{need} --> s{i}\n"));
                } else {
                    out.push_str(&format!(
                        "  s{need} -. \"{}\" .-> s{i}\n",
                        mermaid_text(&condition)
                    ));
                }
            }
        }
        if !destructive.is_empty() {
            out.push_str("  classDef destructive fill:#fdd,stroke:#c00,stroke-width:2px\n");
            out.push_str(&format!("  class {} destructive\n", destructive.join(",")));
        }
        out
    }
}

/// What a graph shows of one step.
pub struct NodeLabel {
    pub id: String,
    pub kind: String,
    /// `success()`, `failure()`, `always()`, `cancelled()`.
    pub condition: String,
    pub destructive: bool,
}

fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;")
}

fn quote(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// Kahn's algorithm with the lowest plan index first among the ready steps.
fn plan_ordered_toposort(needs: &[Vec<usize>], dependents: &[Vec<usize>]) -> Vec<usize> {
    let mut remaining: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..needs.len())
        .filter(|&i| remaining[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(needs.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            remaining[d] -= 1;
            if remaining[d] == 0 {
                ready.push(Reverse(d));
            }
        }
    }
    order
}

/// One cycle, as step indices in dependency order with the first repeated at the end.
/// The cycle through the earliest step (in plan order) that lies on one. Kosaraju's
/// algorithm rather than Tarjan's: petgraph's Tarjan recurses once per step of a chain and
/// overflows the stack on a plan of 100,000 chained steps; Kosaraju walks with a stack of
/// its own.
fn find_cycle(graph: &DiGraph<usize, ()>) -> Option<Vec<usize>> {
    let cyclic = petgraph::algo::kosaraju_scc(graph)
        .into_iter()
        .filter(|scc| scc.len() > 1 || (scc.len() == 1 && graph.contains_edge(scc[0], scc[0])));
    if let Some(scc) = cyclic.min_by_key(|scc| scc.iter().map(|n| graph[*n]).min()) {
        let mut members = FixedBitSet::with_capacity(graph.node_count());
        members.extend(scc.iter().map(|n| n.index()));
        let start = *scc.iter().min_by_key(|n| graph[**n]).expect("non-empty");
        // Walk inside the component until a node repeats: that walk closes a cycle. Where
        // each node stands on the walk is kept, so a cycle of 100,000 steps is found in
        // linear time.
        let mut on_path = vec![usize::MAX; graph.node_count()];
        let mut path = vec![start];
        on_path[start.index()] = 0;
        let mut current = start;
        loop {
            let next = graph
                .neighbors(current)
                .filter(|n| members.contains(n.index()))
                .min_by_key(|n| graph[*n])
                .expect("a strongly connected component has an edge out of each node");
            if on_path[next.index()] != usize::MAX {
                let pos = on_path[next.index()];
                let mut cycle: Vec<usize> = path[pos..].iter().map(|n| graph[*n]).collect();
                cycle.push(graph[next]);
                return Some(cycle);
            }
            on_path[next.index()] = path.len();
            path.push(next);
            current = next;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_plan_position_among_ready_steps() {
        // 0 <- 2, 1 independent, 3 needs 1 and 2
        let dag = Dag::build(vec![vec![], vec![], vec![0], vec![1, 2]]).unwrap();
        assert_eq!(dag.order, vec![0, 1, 2, 3]);
        let mut upstream = dag.upstream(3);
        upstream.sort();
        assert_eq!(upstream, [0, 1, 2]);
    }

    #[test]
    fn reports_a_cycle() {
        let err = Dag::build(vec![vec![2], vec![0], vec![1]]).unwrap_err();
        assert_eq!(err.len(), 4);
        assert_eq!(err.first(), err.last());
    }

    #[test]
    fn self_need_is_a_cycle() {
        assert_eq!(Dag::build(vec![vec![0]]).unwrap_err(), vec![0, 0]);
    }

    #[test]
    fn long_chains_and_long_cycles_need_no_deep_stack() {
        // Each step needs the one before: 200,000 deep, which overflowed a recursive walk.
        let n = 200_000;
        let chain: Vec<Vec<usize>> = (0..n)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        let dag = Dag::build(chain.clone()).unwrap();
        assert_eq!(dag.order.len(), n);
        assert_eq!(dag.upstream(n - 1).len(), n - 1);
        // The same chain closed into one cycle through every step.
        let mut cycle = chain;
        cycle[0] = vec![n - 1];
        let found = Dag::build(cycle).unwrap_err();
        assert_eq!(found.len(), n + 1);
        assert_eq!(found.first(), found.last());
    }
}
