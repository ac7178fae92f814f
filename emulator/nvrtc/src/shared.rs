//! The static shared memory of each kernel, read off the compiled object file.
//!
//! `__shared__` variables are statics in the section `ingot_shared` (cuda_builtins.h). With
//! `-ffunction-sections` every function has its own text section, so the variables a kernel
//! can reach are those its section refers to through relocations, directly or through the
//! functions it calls (followed transitively). Their sizes add up to what ptxas would report
//! as the kernel's static shared memory.

use std::collections::{HashMap, HashSet};

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionIndex, SymbolIndex};

/// The name of the section `__shared__` variables live in.
pub const SECTION: &str = "ingot_shared";

/// Bytes of static shared memory reachable from each kernel in `names`, from the ELF object
/// `obj`.
pub fn static_shared_bytes(obj: &[u8], names: &[String]) -> Result<HashMap<String, u64>, String> {
    let file = object::File::parse(obj).map_err(|e| format!("reading the object file: {e}"))?;
    let shared_sections: HashSet<SectionIndex> = file
        .sections()
        .filter(|s| s.name() == Ok(SECTION))
        .map(|s| s.index())
        .collect();
    // Where each function symbol lives, to find a kernel's own section.
    let mut section_of: HashMap<&str, SectionIndex> = HashMap::new();
    for sym in file.symbols() {
        if let (Ok(name), Some(sec)) = (sym.name(), sym.section_index()) {
            section_of.insert(name, sec);
        }
    }
    let mut out = HashMap::new();
    for name in names {
        let Some(&start) = section_of.get(name.as_str()) else {
            return Err(format!("kernel {name} is not in the object file"));
        };
        out.insert(
            name.clone(),
            reachable_bytes(&file, start, &shared_sections)?,
        );
    }
    Ok(out)
}

/// Follows the relocations from section `start`: text sections are walked, shared variables
/// counted once each (a whole shared section where a relocation names the section itself).
fn reachable_bytes(
    file: &object::File,
    start: SectionIndex,
    shared: &HashSet<SectionIndex>,
) -> Result<u64, String> {
    let mut seen_sections = HashSet::from([start]);
    let mut todo = vec![start];
    let mut variables: HashSet<SymbolIndex> = HashSet::new();
    let mut whole_sections: HashSet<SectionIndex> = HashSet::new();
    while let Some(index) = todo.pop() {
        let section = file
            .section_by_index(index)
            .map_err(|e| format!("section {}: {e}", index.0))?;
        for (_, reloc) in section.relocations() {
            let RelocationTarget::Symbol(sym_index) = reloc.target() else {
                continue;
            };
            let Ok(sym) = file.symbol_by_index(sym_index) else {
                continue;
            };
            let Some(sec) = sym.section_index() else {
                continue;
            };
            if shared.contains(&sec) {
                if sym.kind() == object::SymbolKind::Section {
                    // A static of a non-inline function, named by its section and an offset.
                    match variables_at(file, sec, reloc.addend()) {
                        Some(found) => variables.extend(found),
                        None => {
                            whole_sections.insert(sec);
                        }
                    }
                } else {
                    variables.insert(sym_index);
                }
            } else if is_code(file, sec) && seen_sections.insert(sec) {
                todo.push(sec);
            }
        }
    }
    let mut bytes: u64 = variables
        .iter()
        .filter_map(|&i| file.symbol_by_index(i).ok())
        .filter(|s| {
            !s.section_index()
                .is_some_and(|sec| whole_sections.contains(&sec))
        })
        .map(|s| s.size())
        .sum();
    for sec in whole_sections {
        bytes += file.section_by_index(sec).map(|s| s.size()).unwrap_or(0);
    }
    Ok(bytes)
}

/// The variables of shared section `sec` that a RIP-relative reference with `addend` can
/// mean: the target is `addend + 4` past the section start, plus the size of an immediate
/// operand after the displacement (0, 1, 2 or 4 bytes); each variable that can be the target
/// is counted (a few bytes too many at worst, never too few). `None` if none is there.
fn variables_at(file: &object::File, sec: SectionIndex, addend: i64) -> Option<Vec<SymbolIndex>> {
    let found: Vec<SymbolIndex> = file
        .symbols()
        .filter(|s| s.section_index() == Some(sec) && s.kind() != object::SymbolKind::Section)
        .filter(|s| {
            [4i64, 5, 6, 8].iter().any(|extra| {
                let at = addend + extra;
                at >= 0 && (at as u64) >= s.address() && (at as u64) < s.address() + s.size()
            })
        })
        .map(|s| s.index())
        .collect();
    (!found.is_empty()).then_some(found)
}

fn is_code(file: &object::File, index: SectionIndex) -> bool {
    file.section_by_index(index)
        .is_ok_and(|s| s.kind() == object::SectionKind::Text)
}
