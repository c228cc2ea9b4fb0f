// SPDX-License-Identifier: Apache-2.0
/*
 * platpass.firmware._fdtwalk: the structure block of a flattened device tree, walked
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
 * walk(blob: bytes, node_class) -> (nodes, by_path)
 *
 * node_class(path, parent, props) makes each node (rawtree.RawNode); nodes is every node
 * in blob order, by_path maps each path to its node.
 */
static PyObject *walk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *node_class, *nodes = NULL, *by_path = NULL, *stack = NULL, *result = NULL;
	PyObject **names = NULL;	/* string-block offset -> its name, decoded once */
	PyObject *props = NULL;		/* the open node's properties (borrowed from it) */
	const unsigned char *data, *strings;
	size_t size, off_struct, size_struct, off_strings, size_strings, end, pos;
	Py_buffer view;

	if (nargs != 2) {
		PyErr_SetString(PyExc_TypeError, "walk(blob, node_class)");
		return NULL;
	}
	if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
		return NULL;
	node_class = args[1];
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
			props = PyDict_New();
			if (!props)
				goto out;
			if (depth) {
				PyObject *above, *leaf;

				parent = PyList_GET_ITEM(stack, depth - 1);
				above = PyObject_GetAttr(parent, str_path);
				if (!above) {
					Py_CLEAR(props);
					goto out;
				}
				leaf = PyUnicode_DecodeUTF8((const char *)name, stop - name, NULL);
				if (!leaf) {
					Py_DECREF(above);
					Py_CLEAR(props);
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
			if (!path) {
				Py_CLEAR(props);
				goto out;
			}
			node = PyObject_CallFunctionObjArgs(node_class, path, parent, props, NULL);
			if (!node || PyList_Append(stack, node) < 0 ||
			    PyList_Append(nodes, node) < 0 ||
			    PyDict_SetItem(by_path, path, node) < 0) {
				Py_XDECREF(node);
				Py_DECREF(path);
				Py_CLEAR(props);
				goto out;
			}
			Py_DECREF(node);
			Py_DECREF(path);
			Py_DECREF(props);	/* the node holds it; we keep a borrowed pointer */
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
			open_props = PyObject_GetAttr(PyList_GET_ITEM(stack, depth - 2), str_props);
			if (!open_props)
				goto out;
			props = open_props;
			Py_DECREF(open_props);
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
	Py_XDECREF(nodes);
	Py_XDECREF(by_path);
	Py_XDECREF(stack);
	PyBuffer_Release(&view);
	return result;
}

static PyMethodDef module_methods[] = {
	{"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL,
	 "walk(blob, node_class) -> (nodes, by_path): the structure block, walked once."},
	{NULL}
};

static struct PyModuleDef fdtwalk_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "platpass.firmware._fdtwalk",
	.m_doc = "The device tree's structure block walked in C (optional accelerator).",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fdtwalk(void)
{
	PyObject *m;

	str_phandle = PyUnicode_InternFromString("phandle");
	str_linux_phandle = PyUnicode_InternFromString("linux,phandle");
	str_props = PyUnicode_InternFromString("props");
	str_path = PyUnicode_InternFromString("path");
	if (!str_phandle || !str_linux_phandle || !str_props || !str_path)
		return NULL;
	m = PyModule_Create(&fdtwalk_module);
	if (m && PyModule_AddIntConstant(m, "ABI", ABI_VERSION) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
