// SPDX-License-Identifier: Apache-2.0
/*
 * platpass.firmware._native: the structure block of a flattened device tree, walked
 * once into platpass's RawNode objects.
 *
 * The same walk as rawtree._walk_struct (which stays, and is what runs without this
 * module): one pass over the tokens, a node created when it opens (parents before
 * children, in blob order), its properties filling its dict as they come, its phandle set
 * when it closes.  read_blob has libfdt validate the blob (fdt_check_full) before either
 * walk runs; this one checks every offset it reads against the blob all the same, so no
 * input can make it read outside the buffer.  Errors raise ValueError with the message
 * the Python walk gives (read_blob adds the blob's name); a name that is not UTF-8 raises
 * UnicodeDecodeError, as the Python walk's decode does.
 *
 * Header and tokens are big-endian (devicetree specification, "Flattened Devicetree
 * (DTB) Format").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* Bumped whenever the Python side's expectations change; Python checks it. */
#define ABI_VERSION 1

#define FDT_BEGIN_NODE 1
#define FDT_END_NODE 2
#define FDT_PROP 3
#define FDT_NOP 4
#define FDT_HEADER_SIZE 40

static PyObject *str_phandle, *str_linux_phandle, *str_props, *str_path;

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The phandle a node's properties give it, as rawtree._phandle_of: None unless valid. */
static PyObject *phandle_of(PyObject *props)
{
	PyObject *value = PyDict_GetItemWithError(props, str_phandle);
	uint32_t phandle;

	if (!value) {
		if (PyErr_Occurred())
			return NULL;
		value = PyDict_GetItemWithError(props, str_linux_phandle);
		if (!value) {
			if (PyErr_Occurred())
				return NULL;
			Py_RETURN_NONE;
		}
	}
	if (!PyBytes_Check(value) || PyBytes_GET_SIZE(value) != 4)
		Py_RETURN_NONE;
	phandle = be32((const unsigned char *)PyBytes_AS_STRING(value));
	if (phandle == 0 || phandle == 0xFFFFFFFFu)
		Py_RETURN_NONE;
	return PyLong_FromUnsignedLong(phandle);
}

static PyObject *fail(const char *what, size_t pos)
{
	PyErr_Format(PyExc_ValueError, "%s at offset %zu", what, pos);
	return NULL;
}

/*
 * Where node_class keeps path, parent, props and phandle, when they are __slots__ of the
 * class itself (rawtree.RawNode, whose __init__ only stores them; a test holds the two
 * ways to the same nodes): a node is then made by storing them, without a call to
 * __init__ per node (a tenth of the walk).  Any other class, a subclass included, is
 * called as usual.
 */
struct slots {
	Py_ssize_t path, parent, props, phandle;
};

static int slot_offset(PyObject *cls, const char *name, Py_ssize_t *offset)
{
	PyObject *descr = PyObject_GetAttrString(cls, name);
	int ok = 0;

	if (!descr) {
		PyErr_Clear();
		return 0;
	}
	/* a slot of this very class: a subclass (which may have its own __init__) is called */
	if (Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
	    ((PyDescrObject *)descr)->d_type == (PyTypeObject *)cls) {
		PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;

		if (member->type == T_OBJECT_EX && !(member->flags & READONLY)) {
			*offset = member->offset;
			ok = 1;
		}
	}
	Py_DECREF(descr);
	return ok;
}

static int find_slots(PyObject *cls, struct slots *slots)
{
	return PyType_Check(cls) && ((PyTypeObject *)cls)->tp_itemsize == 0 &&
	       slot_offset(cls, "path", &slots->path) &&
	       slot_offset(cls, "parent", &slots->parent) &&
	       slot_offset(cls, "props", &slots->props) &&
	       slot_offset(cls, "phandle", &slots->phandle);
}

static void set_slot(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
	PyObject **slot = (PyObject **)((char *)obj + offset);

	Py_INCREF(value);
	Py_XSETREF(*slot, value);
}

static PyObject *get_slot(PyObject *obj, Py_ssize_t offset)
{
	return *(PyObject **)((char *)obj + offset);	/* borrowed; set at creation */
}

/* A new node: stored into its slots, or node_class(path, parent, props) when not plain. */
static PyObject *new_node(PyObject *cls, const struct slots *slots, int plain, PyObject *path,
			  PyObject *parent, PyObject *props)
{
	PyTypeObject *type = (PyTypeObject *)cls;
	PyObject *node;

	if (!plain)
		return PyObject_CallFunctionObjArgs(cls, path, parent, props, NULL);
	node = type->tp_alloc(type, 0);
	if (!node)
		return NULL;
	set_slot(node, slots->path, path);
	set_slot(node, slots->parent, parent);
	set_slot(node, slots->props, props);
	set_slot(node, slots->phandle, Py_None);
	return node;
}

/*
 * walk(blob: bytes, node_class) -> (nodes, by_path)
 *
 * node_class(path, parent, props) makes each node (rawtree.RawNode); nodes is every node
 * in blob order, by_path maps each path to its node.
 */
static PyObject *walk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *node_class, *nodes = NULL, *by_path = NULL, *stack = NULL, *result = NULL;
	PyObject **names = NULL;	/* string-block offset -> its name, decoded once */
	PyObject *props = NULL;		/* the open node's properties (a reference of ours) */
	const unsigned char *data, *strings;
	size_t size, off_struct, size_struct, off_strings, size_strings, end, pos;
	struct slots slots;
	Py_buffer view;
	int plain;

	if (nargs != 2) {
		PyErr_SetString(PyExc_TypeError, "walk(blob, node_class)");
		return NULL;
	}
	if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
		return NULL;
	node_class = args[1];
	plain = find_slots(node_class, &slots);
	data = view.buf;
	size = (size_t)view.len;
	if (size < FDT_HEADER_SIZE) {
		fail("too short for a device tree header", 0);
		goto out;
	}
	off_struct = be32(data + 8);
	off_strings = be32(data + 12);
	size_strings = be32(data + 32);
	size_struct = be32(data + 36);
	if (off_struct > size || size_struct > size - off_struct ||
	    off_strings > size || size_strings > size - off_strings) {
		fail("structure or strings block outside the blob", 0);
		goto out;
	}
	end = off_struct + size_struct;
	strings = data + off_strings;
	names = PyMem_Calloc(size_strings ? size_strings : 1, sizeof(*names));
	nodes = PyList_New(0);
	by_path = PyDict_New();
	stack = PyList_New(0);
	if (!names || !nodes || !by_path || !stack) {
		if (!names)
			PyErr_NoMemory();
		goto out;
	}
	pos = off_struct;
	while (pos < end) {
		uint32_t tag;

		if (end - pos < 4) {
			fail("truncated token", pos);
			goto out;
		}
		tag = be32(data + pos);
		if (tag == FDT_PROP) {
			size_t length, nameoff, start;
			PyObject *name, *value;

			if (end - pos < 12) {
				fail("bad property", pos);
				goto out;
			}
			length = be32(data + pos + 4);
			nameoff = be32(data + pos + 8);
			start = pos + 12;
			if (nameoff >= size_strings || !props || length > end - start) {
				fail("bad property", pos);
				goto out;
			}
			name = names[nameoff];
			if (!name) {
				const unsigned char *stop = memchr(strings + nameoff, 0,
								   size_strings - nameoff);

				if (!stop) {
					fail("bad property", pos);
					goto out;
				}
				name = PyUnicode_DecodeUTF8((const char *)strings + nameoff,
							    stop - (strings + nameoff), NULL);
				if (!name)
					goto out;
				names[nameoff] = name;
			}
			value = PyBytes_FromStringAndSize((const char *)data + start, length);
			if (!value || PyDict_SetItem(props, name, value) < 0) {
				Py_XDECREF(value);
				goto out;
			}
			Py_DECREF(value);
			pos = start + ((length + 3) & ~(size_t)3);
		} else if (tag == FDT_BEGIN_NODE) {
			const unsigned char *name = data + pos + 4;
			const unsigned char *stop;
			Py_ssize_t depth = PyList_GET_SIZE(stack);
			PyObject *path, *node, *parent;

			if (end - pos < 4 || !(stop = memchr(name, 0, end - pos - 4))) {
				fail("bad node name", pos);
				goto out;
			}
			Py_XSETREF(props, PyDict_New());
			if (!props)
				goto out;
			if (depth) {
				PyObject *above, *leaf;

				parent = PyList_GET_ITEM(stack, depth - 1);
				if (plain) {
					above = get_slot(parent, slots.path);
					Py_INCREF(above);
				} else {
					above = PyObject_GetAttr(parent, str_path);
				}
				if (!above)
					goto out;
				if (!PyUnicode_Check(above)) {
					Py_DECREF(above);
					PyErr_SetString(PyExc_TypeError, "a node's path must be a str");
					goto out;
				}
				leaf = PyUnicode_DecodeUTF8((const char *)name, stop - name, NULL);
				if (!leaf) {
					Py_DECREF(above);
					goto out;
				}
				if (PyUnicode_GET_LENGTH(above) == 1)	/* the root: "/" */
					path = PyUnicode_FromFormat("/%U", leaf);
				else
					path = PyUnicode_FromFormat("%U/%U", above, leaf);
				Py_DECREF(above);
				Py_DECREF(leaf);
			} else {
				parent = Py_None;
				path = PyUnicode_FromString("/");
			}
			if (!path)
				goto out;
			node = new_node(node_class, &slots, plain, path, parent, props);
			if (!node || PyList_Append(stack, node) < 0 ||
			    PyList_Append(nodes, node) < 0 ||
			    PyDict_SetItem(by_path, path, node) < 0) {
				Py_XDECREF(node);
				Py_DECREF(path);
				goto out;
			}
			Py_DECREF(node);
			Py_DECREF(path);
			pos = ((size_t)(stop - data) + 4) & ~(size_t)3;
		} else if (tag == FDT_END_NODE) {
			Py_ssize_t depth = PyList_GET_SIZE(stack);
			PyObject *node, *phandle, *open_props;

			if (!depth) {
				fail("unbalanced node end", pos);
				goto out;
			}
			node = PyList_GET_ITEM(stack, depth - 1);
			Py_INCREF(node);
			if (PyList_SetSlice(stack, depth - 1, depth, NULL) < 0) {
				Py_DECREF(node);
				goto out;
			}
			open_props = PyObject_GetAttr(node, str_props);
			phandle = open_props ? phandle_of(open_props) : NULL;
			Py_XDECREF(open_props);
			if (!phandle) {
				Py_DECREF(node);
				goto out;
			}
			if (phandle != Py_None &&
			    PyObject_SetAttr(node, str_phandle, phandle) < 0) {
				Py_DECREF(phandle);
				Py_DECREF(node);
				goto out;
			}
			Py_DECREF(phandle);
			Py_DECREF(node);
			if (depth == 1)
				break;	/* the root is closed: the walk is over */
			/* the parent's dict again: it is held by the parent, on the stack */
			Py_XSETREF(props, PyObject_GetAttr(PyList_GET_ITEM(stack, depth - 2),
							   str_props));
			if (!props)
				goto out;
			if (!PyDict_Check(props)) {
				PyErr_SetString(PyExc_TypeError, "node_class must keep props as given");
				goto out;
			}
			pos += 4;
		} else if (tag == FDT_NOP) {
			pos += 4;
		} else {
			PyErr_Format(PyExc_ValueError, "unexpected token 0x%x at offset %zu",
				     tag, pos);
			goto out;
		}
	}
	if (!PyList_GET_SIZE(nodes) || PyList_GET_SIZE(stack)) {
		PyErr_SetString(PyExc_ValueError, "the structure block ends inside a node");
		goto out;
	}
	result = PyTuple_Pack(2, nodes, by_path);
out:
	if (names) {
		size_t i;

		for (i = 0; i < size_strings; i++)
			Py_XDECREF(names[i]);
		PyMem_Free(names);
	}
	Py_XDECREF(props);
	Py_XDECREF(nodes);
	Py_XDECREF(by_path);
	Py_XDECREF(stack);
	PyBuffer_Release(&view);
	return result;
}

/* ------------------------------------------------------------------ references */

#define KIND_NONE 0
#define KIND_CELLS 1
#define KIND_PHANDLES 2
#define KIND_SUPPLY 3

static PyObject *str_interrupts, *str_interrupts_extended, *str_interrupt_map;
static PyObject *str_gpio_hog, *str_gpio_cells;

struct refs {
	PyObject *out;			/* the list of references */
	PyTypeObject *ref_type;		/* consumers.Reference (a tuple subclass) */
	PyObject *by_phandle;
	PyObject *provider;		/* consumers._provider(target, cells_name) */
	PyObject *providers;		/* (phandle, cells_name) -> (provider, count) */
};

/* Append Reference(consumer, prop, supplier's path). */
static int add_ref(struct refs *r, PyObject *consumer, PyObject *prop, PyObject *supplier)
{
	PyObject *path = PyObject_GetAttr(supplier, str_path), *ref;

	if (!path)
		return -1;
	ref = r->ref_type->tp_alloc(r->ref_type, 3);
	if (!ref) {
		Py_DECREF(path);
		return -1;
	}
	Py_INCREF(consumer);
	Py_INCREF(prop);
	PyTuple_SET_ITEM(ref, 0, consumer);
	PyTuple_SET_ITEM(ref, 1, prop);
	PyTuple_SET_ITEM(ref, 2, path);
	/* three strings cannot form a cycle: keep it out of the collector's way, as
	 * CPython does for such tuples (a tree has thousands) */
	if (PyObject_IS_GC(ref))
		PyObject_GC_UnTrack(ref);
	if (PyList_Append(r->out, ref) < 0) {
		Py_DECREF(ref);
		return -1;
	}
	Py_DECREF(ref);
	return 0;
}

/* by_phandle.get(phandle), borrowed; NULL with no error when there is none. */
static PyObject *node_of(struct refs *r, uint32_t phandle)
{
	PyObject *key = PyLong_FromUnsignedLong(phandle), *node;

	if (!key)
		return NULL;
	node = PyDict_GetItemWithError(r->by_phandle, key);
	Py_DECREF(key);
	return node;
}

/* A phandle-with-arguments list, walked with each provider's cell count. */
static int cells_list(struct refs *r, PyObject *path, PyObject *name, PyObject *cells_name,
		      const unsigned char *value, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint32_t phandle = be32(value + 4 * i);
		PyObject *key, *entry, *provider;
		long count;

		if (!phandle) {	/* an empty entry */
			i++;
			continue;
		}
		key = Py_BuildValue("(kO)", (unsigned long)phandle, cells_name);
		if (!key)
			return -1;
		entry = PyDict_GetItemWithError(r->providers, key);
		if (entry) {
			Py_INCREF(entry);
		} else {
			PyObject *target;

			if (PyErr_Occurred()) {
				Py_DECREF(key);
				return -1;
			}
			target = node_of(r, phandle);
			if (!target && PyErr_Occurred()) {
				Py_DECREF(key);
				return -1;
			}
			entry = PyObject_CallFunctionObjArgs(r->provider, target ? target : Py_None,
							     cells_name, NULL);
			if (!entry || PyDict_SetItem(r->providers, key, entry) < 0) {
				Py_XDECREF(entry);
				Py_DECREF(key);
				return -1;
			}
		}
		Py_DECREF(key);
		if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2) {
			Py_DECREF(entry);
			PyErr_SetString(PyExc_TypeError, "_provider must give (node, count)");
			return -1;
		}
		provider = PyTuple_GET_ITEM(entry, 0);
		count = PyLong_AsLong(PyTuple_GET_ITEM(entry, 1));
		if (count == -1 && PyErr_Occurred()) {
			Py_DECREF(entry);
			return -1;
		}
		if (provider == Py_None) {
			Py_DECREF(entry);
			break;
		}
		if (add_ref(r, path, name, provider) < 0) {
			Py_DECREF(entry);
			return -1;
		}
		Py_DECREF(entry);
		if (count < 0 || (size_t)count >= n - i)
			break;	/* the list ends inside this entry: nothing further */
		i += 1 + (size_t)count;
	}
	return 0;
}

/*
 * references(nodes, by_phandle, enabled, kinds, kind, skipped, provider, irq_parent,
 *            irq_map, reference_class) -> [Reference, ...]
 *
 * consumers.references' walk over every node, in blob order (its Python loop stays, and
 * runs without this module): ``kinds`` is consumers' memo of how a property name refers
 * (name -> (kind, cells name)), ``kind(name)`` classifies a name it lacks; ``provider``
 * is consumers._provider; ``irq_parent(node)`` gives the interrupt parent or None, and
 * ``irq_map(node)`` the parents of a nexus's interrupt-map.
 */
static PyObject *references(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *nodes, *enabled, *kinds, *kind, *skipped, *irq_parent, *irq_map;
	struct refs r = {0};
	Py_ssize_t i, count;

	if (nargs != 10 || !PyList_Check(args[0]) || !PyDict_Check(args[1]) ||
	    !PyDict_Check(args[3]) || !PyType_Check(args[9]) ||
	    !PyType_IsSubtype((PyTypeObject *)args[9], &PyTuple_Type)) {
		PyErr_SetString(PyExc_TypeError, "references(nodes, by_phandle, enabled, kinds, "
				"kind, skipped, provider, irq_parent, irq_map, reference_class)");
		return NULL;
	}
	nodes = args[0];
	r.by_phandle = args[1];
	enabled = args[2];
	kinds = args[3];
	kind = args[4];
	skipped = args[5];
	r.provider = args[6];
	irq_parent = args[7];
	irq_map = args[8];
	r.ref_type = (PyTypeObject *)args[9];
	r.out = PyList_New(0);
	r.providers = PyDict_New();
	if (!r.out || !r.providers)
		goto fail;
	count = PyList_GET_SIZE(nodes);
	for (i = 0; i < count; i++) {
		PyObject *node = PyList_GET_ITEM(nodes, i), *path = NULL, *props = NULL;
		PyObject *name, *value;
		Py_ssize_t pos = 0;
		int interesting = 0, has_irqs, has_map, skip, rc = -1;

		Py_INCREF(node);
		path = PyObject_GetAttr(node, str_path);
		props = path ? PyObject_GetAttr(node, str_props) : NULL;
		if (!props || !PyDict_Check(props)) {
			if (props)
				PyErr_SetString(PyExc_TypeError, "a node's props must be a dict");
			goto next;
		}
		skip = PySequence_Contains(skipped, path);
		if (skip) {
			rc = skip < 0 ? -1 : 0;
			goto next;
		}
		has_irqs = PyDict_Contains(props, str_interrupts);
		has_map = PyDict_Contains(props, str_interrupt_map);
		if (has_irqs < 0 || has_map < 0)
			goto next;
		/* Does the node refer to anything at all?  Only then is `enabled` asked. */
		interesting = has_irqs || has_map;
		while (!interesting && PyDict_Next(props, &pos, &name, &value)) {
			PyObject *k = PyDict_GetItemWithError(kinds, name);

			if (!k) {
				if (PyErr_Occurred())
					goto next;
				interesting = 1;	/* not classified yet: it may refer */
			} else if (!PyTuple_Check(k) || PyTuple_GET_SIZE(k) != 2 ||
				   PyLong_AsLong(PyTuple_GET_ITEM(k, 0)) != KIND_NONE) {
				PyErr_Clear();	/* a memo it cannot read: the full pass decides */
				interesting = 1;
			}
		}
		if (!interesting) {
			rc = 0;
			goto next;
		}
		if (enabled != Py_None) {
			PyObject *res = PyObject_CallOneArg(enabled, path);
			int on;

			if (!res)
				goto next;
			on = PyObject_IsTrue(res);
			Py_DECREF(res);
			if (on <= 0) {
				rc = on;
				goto next;
			}
		}
		pos = 0;
		while (PyDict_Next(props, &pos, &name, &value)) {
			PyObject *k = PyDict_GetItemWithError(kinds, name), *cells_name;
			const unsigned char *data;
			size_t len;
			long which;

			if (k) {
				Py_INCREF(k);
			} else {
				if (PyErr_Occurred())
					goto next;
				k = PyObject_CallOneArg(kind, name);
				if (!k)
					goto next;
			}
			if (!PyTuple_Check(k) || PyTuple_GET_SIZE(k) != 2) {
				Py_DECREF(k);
				PyErr_SetString(PyExc_TypeError, "a kind must be (int, str)");
				goto next;
			}
			which = PyLong_AsLong(PyTuple_GET_ITEM(k, 0));
			cells_name = PyTuple_GET_ITEM(k, 1);
			if (which == -1 && PyErr_Occurred()) {
				Py_DECREF(k);
				goto next;
			}
			if (which == KIND_NONE) {
				Py_DECREF(k);
				continue;
			}
			if (!PyBytes_Check(value)) {	/* props are bytes; anything else: */
				Py_DECREF(k);
				PyErr_SetString(PyExc_TypeError, "a property value must be bytes");
				goto next;
			}
			if (PyBytes_GET_SIZE(value) < 4) {
				Py_DECREF(k);
				continue;
			}
			data = (const unsigned char *)PyBytes_AS_STRING(value);
			len = (size_t)PyBytes_GET_SIZE(value) / 4;
			if (which == KIND_CELLS) {
				int hog = 0, cmp;

				cmp = PyObject_RichCompareBool(cells_name, str_gpio_cells, Py_EQ);
				if (cmp > 0)
					hog = PyDict_Contains(props, str_gpio_hog);
				if (cmp < 0 || hog < 0) {
					Py_DECREF(k);
					goto next;
				}
				if (!hog && cells_list(&r, path, name, cells_name, data, len) < 0) {
					Py_DECREF(k);
					goto next;
				}
			} else if (which == KIND_SUPPLY) {
				PyObject *supplier = node_of(&r, be32(data));

				if ((!supplier && PyErr_Occurred()) ||
				    (supplier && add_ref(&r, path, name, supplier) < 0)) {
					Py_DECREF(k);
					goto next;
				}
			} else {	/* KIND_PHANDLES */
				size_t j;

				for (j = 0; j < len; j++) {
					PyObject *referred = node_of(&r, be32(data + 4 * j));

					if ((!referred && PyErr_Occurred()) ||
					    (referred && add_ref(&r, path, name, referred) < 0)) {
						Py_DECREF(k);
						goto next;
					}
				}
			}
			Py_DECREF(k);
		}
		if (has_irqs) {
			int extended = PyDict_Contains(props, str_interrupts_extended);

			if (extended < 0)
				goto next;
			if (!extended) {
				PyObject *parent = PyObject_CallOneArg(irq_parent, node);

				if (!parent)
					goto next;
				if (parent != Py_None &&
				    add_ref(&r, path, str_interrupts, parent) < 0) {
					Py_DECREF(parent);
					goto next;
				}
				Py_DECREF(parent);
			}
		}
		if (has_map) {
			PyObject *targets = PyObject_CallOneArg(irq_map, node), *it, *target;

			if (!targets)
				goto next;
			it = PyObject_GetIter(targets);
			Py_DECREF(targets);
			if (!it)
				goto next;
			while ((target = PyIter_Next(it))) {
				int bad = add_ref(&r, path, str_interrupt_map, target);

				Py_DECREF(target);
				if (bad < 0)
					break;
			}
			Py_DECREF(it);
			if (PyErr_Occurred())
				goto next;
		}
		rc = 0;
next:
		Py_XDECREF(props);
		Py_XDECREF(path);
		Py_DECREF(node);
		if (rc < 0)
			goto fail;
	}
	Py_DECREF(r.providers);
	return r.out;
fail:
	Py_XDECREF(r.providers);
	Py_XDECREF(r.out);
	return NULL;
}

static PyMethodDef module_methods[] = {
	{"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL,
	 "walk(blob, node_class) -> (nodes, by_path): the structure block, walked once."},
	{"references", (PyCFunction)(void (*)(void))references, METH_FASTCALL,
	 "references(...) -> [Reference]: consumers.references' walk (see the source)."},
	{NULL}
};

static struct PyModuleDef native_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "platpass.firmware._native",
	.m_doc = "The device tree's structure block walked in C (optional accelerator).",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
	PyObject *m;

	str_phandle = PyUnicode_InternFromString("phandle");
	str_linux_phandle = PyUnicode_InternFromString("linux,phandle");
	str_props = PyUnicode_InternFromString("props");
	str_path = PyUnicode_InternFromString("path");
	str_interrupts = PyUnicode_InternFromString("interrupts");
	str_interrupts_extended = PyUnicode_InternFromString("interrupts-extended");
	str_interrupt_map = PyUnicode_InternFromString("interrupt-map");
	str_gpio_hog = PyUnicode_InternFromString("gpio-hog");
	str_gpio_cells = PyUnicode_InternFromString("#gpio-cells");
	if (!str_phandle || !str_linux_phandle || !str_props || !str_path || !str_interrupts ||
	    !str_interrupts_extended || !str_interrupt_map || !str_gpio_hog || !str_gpio_cells)
		return NULL;
	m = PyModule_Create(&native_module);
	if (m && PyModule_AddIntConstant(m, "ABI", ABI_VERSION) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
